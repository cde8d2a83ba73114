"""
Config keys of nonlocal_det, in Detectron2's ``add_*_config`` style. Loading config files, with
errors that name the key, is the harness's (``nonlocal_det.harness.config``).
"""

from detectron2.config import CfgNode as CN


def add_nonlocal_config(cfg):
    """
    Add the keys for non-local backbones and keypoint heads to a Detectron2 config. Defaults are
    the paper's (Wang et al. 2018, sec. 6): one embedded-Gaussian block in res4, right before its
    last residual block; 4 blocks in the 8-conv keypoint head, one after every 2 convs.
    """
    cfg.MODEL.NONLOCAL = CN()
    # With MODEL.BACKBONE.NAME "build_nonlocal_backbone": the registered backbone that gets the
    # blocks, any builder whose backbone is, or has as bottom_up, a ResNet built from
    # MODEL.RESNETS: "build_resnet_backbone" (C4), "build_retinanet_resnet_fpn_backbone", ...
    cfg.MODEL.NONLOCAL.BACKBONE_NAME = "build_resnet_fpn_backbone"
    # The block placed after the residual blocks RES2..RES5 name (and in the keypoint head):
    # "NL" (non-local), "CGNL" (compact generalized non-local) or "DNL" (disentangled non-local).
    cfg.MODEL.NONLOCAL.BLOCK = "NL"
    # NL pairwise function: "gaussian", "embedded_gaussian", "dot_product", "concatenation".
    cfg.MODEL.NONLOCAL.MODE = "embedded_gaussian"
    # Inner channels = block channels // REDUCTION (the paper's bottleneck: 2).
    cfg.MODEL.NONLOCAL.REDUCTION = 2
    # NL: 2x2 max pooling of the key side (phi and g).
    cfg.MODEL.NONLOCAL.SUB_SAMPLE = True
    # NL: scale embedded-Gaussian logits by 1/sqrt(inner channels) (authors' code); False: paper.
    cfg.MODEL.NONLOCAL.USE_SCALE = True
    # Norm after W_z: "GN", "SyncBN", "BN", "" or any Detectron2 norm name except FrozenBN. GN
    # trains with 1-2 images per GPU; BN needs large per-GPU batches. "GN" is GroupNorm with
    # gcd(32, C) groups: Detectron2's GroupNorm(32, C) wherever 32 divides C (every ResNet stage).
    cfg.MODEL.NONLOCAL.NORM = "GN"
    # How each block's last layer starts (NL, CGNL, DNL: the norm after W_z, or W_z with NORM "";
    # GC: the last conv of each fusion). "identity": zero, so a stock checkpoint gives the stock
    # model's outputs (the paper's; GC with "channel_mul" starts at x / 2). "standard": the norm's
    # weight 1, or the conv's MSRA init; "small": 0.1 of it. Which INIT when, as measured:
    # nonlocal_det.layers.INIT_ADVICE (docs/usage.md#which-init).
    cfg.MODEL.NONLOCAL.INIT = "identity"
    # With a meta-architecture of nonlocal_det.modeling.meta_arch: the backbone's blocks compute
    # each image on its valid (unpadded) region, with norm statistics over valid positions, so an
    # image's features do not depend on its batch-mates' padding (docs/valid_region.md). False:
    # they attend over the padded map, as in the paper.
    cfg.MODEL.NONLOCAL.VALID_REGION = True
    # Backbone placement: per stage, indices of the residual blocks AFTER which a block is
    # inserted (0-based; negative counts from the stage's end). -2 = right before the last.
    # Paper, 1 block: RES4 = [-2]. 5 blocks (R50): RES3 = [1, 3], RES4 = [1, 3, 5].
    # 10 blocks (R50): RES3 = [0, 1, 2, 3], RES4 = [0, 1, 2, 3, 4, 5].
    cfg.MODEL.NONLOCAL.RES2 = []
    cfg.MODEL.NONLOCAL.RES3 = []
    cfg.MODEL.NONLOCAL.RES4 = [-2]
    cfg.MODEL.NONLOCAL.RES5 = []

    cfg.MODEL.NONLOCAL.CGNL = CN()
    # CGNL kernel: "dot", "embedded_gaussian" or "gaussian_rbf" (Yue et al. 2018, sec. 3.4).
    cfg.MODEL.NONLOCAL.CGNL.KERNEL = "dot"
    # CGNL channel groups (the paper's best on COCO-scale models: 8).
    cfg.MODEL.NONLOCAL.CGNL.GROUPS = 8
    # CGNL Taylor expansion order P for the Gaussian kernels.
    cfg.MODEL.NONLOCAL.CGNL.ORDER = 3
    # CGNL: divide the grouped sum by sqrt(N * C').
    cfg.MODEL.NONLOCAL.CGNL.USE_SCALE = False
    # CGNL: width gamma of the Gaussian RBF kernel.
    cfg.MODEL.NONLOCAL.CGNL.GAMMA = 1e-4

    cfg.MODEL.NONLOCAL.DNL = CN()
    # DNL: temperature T of the whitened pairwise softmax (Yin et al. 2020, mmsegmentation: 0.05).
    cfg.MODEL.NONLOCAL.DNL.TEMPERATURE = 0.05

    # GC (global context, Cao et al. 2019): a block inside every residual block of these stages,
    # before the residual addition (GCNet's c3-c5: ["res3", "res4", "res5"]), with or without
    # the blocks of RES2..RES5.
    cfg.MODEL.NONLOCAL.GC = CN()
    cfg.MODEL.NONLOCAL.GC.STAGES = []
    # GC bottleneck width = int(channels * RATIO) (GCNet's r16: 1/16).
    cfg.MODEL.NONLOCAL.GC.RATIO = 0.0625
    # GC context pooling: "att" (attention pooling) or "avg" (global average pooling).
    cfg.MODEL.NONLOCAL.GC.POOLING = "att"
    # GC fusion: a non-empty subset of ["channel_add", "channel_mul"].
    cfg.MODEL.NONLOCAL.GC.FUSION = ["channel_add"]

    for old, new in RENAMED_KEYS.items():
        if not cfg.key_is_renamed(old):
            cfg.register_renamed_key(old, new)

    # Keypoint head "KRCNNConvDeconvUpsampleNLHead": number of NL blocks (the paper: 4) ...
    cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_NONLOCAL = 4
    # ... one after every NONLOCAL_EVERY convs of the head (the paper: 2 of 8).
    cfg.MODEL.ROI_KEYPOINT_HEAD.NONLOCAL_EVERY = 2


# Keys of earlier versions -> their names now; a config that uses one gets an error naming both.
RENAMED_KEYS = {"MODEL.NONLOCAL.MASK_PADDING": "MODEL.NONLOCAL.VALID_REGION"}
