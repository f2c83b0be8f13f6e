"""The review page: `python -m pneumo.app model=...` serves one local web page where a reader drops in
images and sees, for each, the decoded image, P(pneumonia), the decision at the operating threshold, a
Grad-CAM overlay and which model said so.

May import config, paths, command_line, data, models, evaluation, tracking and deploy; nothing imports it.
"""
