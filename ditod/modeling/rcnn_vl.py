"""GeneralizedRCNN whose backbone also reads each page's OCR tokens."""

import torch
from torch.nn.utils.rnn import pad_sequence

from detectron2.layers.wrappers import shapes_to_tensor
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.utils.events import get_event_storage

__all__ = ["VLGeneralizedRCNN", "normalize_token_boxes"]


def normalize_token_boxes(token_boxes, image_sizes):
    """
    Pixel boxes (B, T, 4) to LayoutLMv3's integer layout boxes 0..1000 of each
    image's own (unpadded) size.

    Args:
        image_sizes: (B, 2) tensor of (height, width).
    """
    height, width = image_sizes[:, 0].to(token_boxes), image_sizes[:, 1].to(token_boxes)
    scale = torch.stack([width, height, width, height], dim=-1).unsqueeze(1)
    return (token_boxes / scale * 1000).clamp(0, 1000).long()


@META_ARCH_REGISTRY.register()
class VLGeneralizedRCNN(GeneralizedRCNN):
    """
    `GeneralizedRCNN` for a text-aware backbone. Each input dict may carry, besides
    "image" (and "instances" in training):

    * input_ids: LongTensor (T,) token ids of the page's OCR words;
    * token_boxes: FloatTensor (T, 4) x0, y0, x1, y1 of each token in pixels of "image"
      (after the mapper's transforms).

    Pages are padded to the longest token sequence of the batch with the model's pad id
    and attention mask 0; a page without these keys has no tokens. Everything else
    (losses, inference, postprocessing) is `GeneralizedRCNN`'s.
    """

    def backbone_inputs(self, batched_inputs, images):
        """The dict `LayoutLMv3Backbone` reads: images plus the padded text batch."""
        inputs = {"images": images.tensor}
        bottom_up = self.backbone.bottom_up
        if not bottom_up.uses_text or not any("input_ids" in x for x in batched_inputs):
            return inputs
        ids = [
            self._move_to_current_device(x.get("input_ids", torch.empty(0, dtype=torch.long))) for x in batched_inputs
        ]
        boxes = [self._move_to_current_device(x.get("token_boxes", torch.empty(0, 4))).float() for x in batched_inputs]
        for x, page_ids, page_boxes in zip(batched_inputs, ids, boxes):
            if page_ids.shape[0] != page_boxes.shape[0]:
                raise ValueError(
                    f"{x.get('file_name', 'an input')}: {page_ids.shape[0]} input_ids but "
                    f"{page_boxes.shape[0]} token_boxes"
                )
        if len(ids) == 1:
            # One page needs no padding. Written without Python numbers of the input, so
            # that a trace (ONNX export) keeps the number of tokens dynamic.
            input_ids, token_boxes = ids[0][None], boxes[0][None]
            attention_mask = torch.ones_like(input_ids)
        else:
            input_ids = pad_sequence(ids, batch_first=True, padding_value=bottom_up.pad_token_id)
            token_boxes = pad_sequence(boxes, batch_first=True)
            lengths = torch.tensor([len(i) for i in ids], device=input_ids.device)
            attention_mask = (torch.arange(input_ids.shape[1], device=input_ids.device) < lengths[:, None]).long()
        # In a trace the sizes are tensors of the input's shape (`shapes_to_tensor`).
        image_sizes = torch.stack([shapes_to_tensor(list(size), token_boxes.device) for size in images.image_sizes])
        inputs.update(
            input_ids=input_ids,
            bbox=normalize_token_boxes(token_boxes, image_sizes) * attention_mask.unsqueeze(-1),
            attention_mask=attention_mask,
            token_boxes=token_boxes,
        )
        return inputs

    def forward(self, batched_inputs):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = None
        if "instances" in batched_inputs[0]:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(self.backbone_inputs(batched_inputs, images))
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            self.visualize_training(batched_inputs, proposals)
        return {**detector_losses, **proposal_losses}

    def inference(self, batched_inputs, detected_instances=None, do_postprocess=True):
        assert not self.training
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(self.backbone_inputs(batched_inputs, images))
        if detected_instances is None:
            proposals, _ = self.proposal_generator(images, features, None)
            results, _ = self.roi_heads(images, features, proposals, None)
        else:
            detected_instances = [x.to(self.device) for x in detected_instances]
            results = self.roi_heads.forward_with_given_boxes(features, detected_instances)
        if do_postprocess:
            return GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        return results
