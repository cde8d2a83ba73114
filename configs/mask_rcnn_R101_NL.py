# LazyConfig equivalent of mask_rcnn_R101_NL.yaml: Mask R-CNN R101-FPN, one embedded-Gaussian
# non-local block in res4 right before its last residual block, 3x schedule.
#   python train_net.py --config-file configs/mask_rcnn_R101_NL.py [--num-gpus 8] [key=value ...]
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from nonlocal_det.modeling import (
    NonLocalGeneralizedRCNN,
    make_nonlocal_stages,
    nonlocal_block_factory,
)

optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_3x
dataloader = get_config("common/data/coco.py").dataloader
train = get_config("common/train.py").train
model = get_config("common/models/mask_rcnn_fpn.py").model

# GeneralizedRCNN whose non-local blocks compute each image on its valid region
# (docs/valid_region.md)
model._target_ = NonLocalGeneralizedRCNN
model.valid_region = True
model.backbone.bottom_up.freeze_at = 2
model.backbone.bottom_up.stages = L(make_nonlocal_stages)(
    depth=101,
    stride_in_1x1=True,
    norm="FrozenBN",
    nonlocal_positions={"res4": [-2]},
    nonlocal_block=L(nonlocal_block_factory)(
        block="NL",
        mode="embedded_gaussian",
        reduction=2,
        sub_sample=True,
        use_scale=True,
        norm="GN",
    ),
)
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.max_iter = 270000
