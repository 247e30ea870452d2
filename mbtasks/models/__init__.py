"""Whole networks and their parts, plain nn code usable without Lightning (torchvision-style).

``classifier`` and ``embedding``: a backbone plus a head; ``detection``: SSD / SSDLite (head, default
boxes, box coding, matching, loss, post-processing).
"""
