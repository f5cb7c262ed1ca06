"""``sam2-vitplug app``: a local web page over the few-shot library (issue 18).

Why a page: few-shot segmentation is interactive (pick references, look, adjust, export). The
page is a thin layer: clicks become SAM2 predictor calls (:mod:`.segment`), references become a
COCO json (:mod:`.refstore`), Run executes the very ``fewshot memory`` / ``fewshot run``
commands the CLI runs (:mod:`.jobs`), Review filters their results (:mod:`.review`). The server
is the standard library's ``ThreadingHTTPServer`` (:mod:`.server`); the page is plain
HTML/JS/CSS shipped in ``static/`` (no CDN, works offline).
"""
