"""One router per group of endpoints; ``serving.app`` includes them."""
