"""The test-time resize of the data loader without detectron2: detectron2's
`ResizeShortestEdge` (short side to INPUT.MIN_SIZE_TEST, long side at most
INPUT.MAX_SIZE_TEST) and the `ResizeTransform` it returns, for one page."""

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["ShortestEdgeResize"]


@dataclass(frozen=True)
class ShortestEdgeResize:
    """
    A page of height x width resized to new_height x new_width: the image with PIL's
    bilinear filter, boxes scaled, as detectron2's `ResizeTransform` does (an exported
    model's runtime must give its graph the pixels the PyTorch model saw).
    """

    height: int
    width: int
    new_height: int
    new_width: int

    @classmethod
    def for_image(cls, height: int, width: int, short_edge: int, max_size: int) -> "ShortestEdgeResize":
        """The resize of `ResizeShortestEdge(short_edge, max_size)` (its `get_output_shape`
        arithmetic, rounding included); short_edge 0: none."""
        if short_edge == 0:
            return cls(height, width, height, width)
        scale = short_edge / min(height, width)
        new_height, new_width = (short_edge, scale * width) if height < width else (scale * height, short_edge)
        if max(new_height, new_width) > max_size:
            scale = max_size / max(new_height, new_width)
            new_height, new_width = new_height * scale, new_width * scale
        return cls(height, width, int(new_height + 0.5), int(new_width + 0.5))

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """`image` (H x W x 3 uint8) resized."""
        if image.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"the resize is for a {self.width}x{self.height} image, got {image.shape[1]}x{image.shape[0]}"
            )
        if (self.new_height, self.new_width) == (self.height, self.width):
            return image
        resized = Image.fromarray(image).resize((self.new_width, self.new_height), Image.BILINEAR)
        return np.asarray(resized)

    def apply_box(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (N, 4 x0, y0, x1, y1) in pixels of the page, in pixels of the resized page."""
        scale_x, scale_y = self.new_width * 1.0 / self.width, self.new_height * 1.0 / self.height
        return np.asarray(boxes, dtype=np.float64) * np.array([scale_x, scale_y, scale_x, scale_y])
