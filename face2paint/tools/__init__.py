"""User-facing tools beside the pipeline, not inside it: the face-quality evaluation
(`face2paint eval`), debug drawing (`stylize --debug`), the style pictures of the web page
(style_examples.py) and of docs/STYLES.md (styles_doc.py) and weight converters
(`face2paint models convert-*`).

May import models/ and settings; nothing in models/, jobs/, worker/ or api/ imports tools/.
"""
