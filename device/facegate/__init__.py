"""facegate: on-device 1:1 face verification for unattended kiosks."""
import os as _os
import sys as _sys

__version__ = "0.1.0"

# OpenCV reads its decoders' pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS) once, when cv2 is
# loaded. Every facegate module that imports cv2 is imported after this package, so the limit
# is set here: an image whose header check was somehow fooled still cannot make the decoder
# allocate more than this (imageio.decode_image). A larger value in the environment is lowered.
DECODER_MAX_PIXELS = 40_000_000
try:
    _set = int(_os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", ""))
except ValueError:
    _set = 0
if not 0 < _set <= DECODER_MAX_PIXELS:
    _os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(DECODER_MAX_PIXELS)
# False when something loaded cv2 before facegate (a script importing cv2 first): the limit
# above then holds only if that process's environment already had it
DECODER_CAPPED = "cv2" not in _sys.modules or 0 < _set <= DECODER_MAX_PIXELS
