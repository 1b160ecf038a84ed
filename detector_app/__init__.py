"""detector-app: real-time animal detection for MentraOS smart glasses (Mentra Live)."""

# opencv-python and PyAV each bundle their own FFmpeg libraries. If PyAV's are loaded first,
# cv2.namedWindow() (Qt) never returns (measured: opencv-python 5.0, av 18.1, under X11). Loading
# cv2 first avoids it, so the package makes that order hold for every entry point.
import cv2  # noqa: F401  (import order matters, see above)

__version__ = "0.1.0"
