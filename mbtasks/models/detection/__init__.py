"""SSD / SSDLite: the head, default boxes, box coding, matching, loss and post-processing."""
