#!/usr/bin/env python3
"""Write sample portraits that every install has: the public-domain photograph of
Rear Admiral Grace Hopper (US Navy, 1984) that matplotlib ships in its sample data.

    python scripts/sample_portraits.py OUT_DIR

hopper_photo.jpg  - the photograph itself (the "camera" image)
hopper_id.png     - a tight 102x126 crop, like the portrait on an ID card's chip
"""
import sys
from pathlib import Path

import cv2
import matplotlib

src = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/samples")
out.mkdir(parents=True, exist_ok=True)
img = cv2.imread(str(src))
cv2.imwrite(str(out / "hopper_photo.jpg"), img)
h, w = img.shape[:2]
# head and shoulders, ID-photo framing (the face fills most of the crop)
crop = img[int(h * 0.04):int(h * 0.62), int(w * 0.22):int(w * 0.78)]
cv2.imwrite(str(out / "hopper_id.png"), cv2.resize(crop, (102, 126), interpolation=cv2.INTER_AREA))
print(out / "hopper_id.png", out / "hopper_photo.jpg")
