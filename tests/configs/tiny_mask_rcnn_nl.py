# A tiny LazyConfig for the tests: Mask R-CNN R18-FPN with GroupNorm (trains from random weights)
# and one non-local block in res4, on the generated dataset, small images, 4 iterations on a CPU.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from fvcore.common.param_scheduler import MultiStepParamScheduler

from nonlocal_det.modeling import make_nonlocal_stages, nonlocal_block_factory

model = get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up.stem.norm = "GN"
model.backbone.bottom_up.stages = L(make_nonlocal_stages)(
    depth=18,
    norm="GN",
    nonlocal_positions={"res4": [-2]},
    nonlocal_block=L(nonlocal_block_factory)(block="NL", mode="embedded_gaussian", norm="GN"),
)
model.backbone.norm = "GN"
model.backbone.out_channels = 64
model.proposal_generator.head.in_channels = 64
model.proposal_generator.post_nms_topk = (200, 100)
model.roi_heads.num_classes = 4
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.input_shape.channels = 64
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape.channels = 256
model.roi_heads.box_predictor.test_score_thresh = 0.0
model.roi_heads.mask_head.input_shape.channels = 64
model.roi_heads.mask_head.conv_dims = [64, 64]

dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.dataset.names = "nonlocal_synthetic_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(128,), max_size=192, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.dataset.names = "nonlocal_synthetic_val"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=128, max_size=192)
]
dataloader.test.num_workers = 0

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.001
lr_multiplier = L(MultiStepParamScheduler)(
    values=[1.0, 0.1], milestones=[3], num_updates="${train.max_iter}"
)

train = get_config("common/train.py").train
train.device = "cpu"
train.max_iter = 4
train.checkpointer.period = 2
train.eval_period = 0  # evaluate once, after the last iteration
train.log_period = 1
