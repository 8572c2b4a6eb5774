"""The script ``tastebud studio`` (and :func:`tastebud.studio.launch`) hands to ``streamlit run``.

It only runs :func:`tastebud.studio.app.main`. It lives in a directory without a ``pages/`` folder on purpose: when
the main script has a ``pages/`` sibling, Streamlit starts in its legacy pages-directory mode, and the first visitor
of a page URL (``/operations``) gets that page's script run alone, without the app's navigation and settings, until
someone opens ``/``. ``streamlit run src/tastebud/studio/app.py`` still works (open ``/`` first).
"""

from tastebud.studio.app import main

main()
