"""Synthetic data sets, written once as real files in the formats users bring (image folders, COCO
json, identity folders), so the default runs need no download and exercise the readers a user's data
goes through. Apart from the real-format readers in :mod:`mbtasks.data`.

- :mod:`~mbtasks.data.synthetic.drawing`: shapes on varied backgrounds (the drawing primitives);
- :mod:`~mbtasks.data.synthetic.shapes`: the shapes classification and detection sets;
- :mod:`~mbtasks.data.synthetic.faces`: procedural identities for the embedding task;
- :mod:`~mbtasks.data.synthetic.face_scenes`: scenes of those faces for detect-then-embed.
"""

from mbtasks.data.synthetic.face_scenes import make_face_scenes
from mbtasks.data.synthetic.faces import make_synthetic_faces
from mbtasks.data.synthetic.shapes import make_shapes_classification, make_shapes_detection

__all__ = ["make_face_scenes", "make_shapes_classification", "make_shapes_detection", "make_synthetic_faces"]
