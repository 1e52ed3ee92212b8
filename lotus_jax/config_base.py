"""The shared shape of every config; `configs/*.py` start from `base_config()` and change what differs.

Every key a user may override with `--config.key=value` exists here (ml_collections rejects unknown keys,
so a typo fails instead of being ignored).
"""

from __future__ import annotations

import ml_collections as mlc
from ml_collections.config_dict import placeholder

from lotus_jax.methods import default_configs
from lotus_jax.methods.common import optimizer_config

ALL_STAGES = "train,retrain,unlearn,evaluate"
ALL_METHODS = "lotus,finetune,neggrad_plus,random_labels,bad_teacher,scrub,ssd,unsir,salun"


def base_config() -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.seed = 3407
    c.seeds = ""  # e.g. "3407,13,12": the whole comparison per seed, reported as mean ± std
    c.stages = ALL_STAGES
    c.methods = ALL_METHODS
    c.dtype = "float32"
    c.compat = False  # reproduce the reference code's rounding and JSD form (SPEC §4)
    c.original_checkpoint = placeholder(str)  # start from this orbax checkpoint instead of training
    c.gold_checkpoint = placeholder(str)
    # Devices on each mesh axis (-1 = the rest); data * fsdp must equal the number of devices. Parameters
    # and optimizer state of 2**14+ elements are split along fsdp, batches along data and fsdp.
    c.mesh = mlc.ConfigDict({"data": -1, "fsdp": 1})
    c.distributed = False  # jax.distributed.initialize() first (multi-host; also when JAX_COORDINATOR_ADDRESS)

    c.data = mlc.ConfigDict()
    c.data.source = "digits"  # digits | folder | tfds
    c.data.name = placeholder(str)  # tfds name
    c.data.path = placeholder(str)  # folder: directory or .tar/.tar.gz
    c.data.data_dir = placeholder(str)  # tfds data_dir
    c.data.train_split = "train"
    c.data.heldout_split = "test"
    c.data.channels = placeholder(int)
    c.data.image_size = placeholder(int)  # squash to N x N on load (folder/tfds); or use data.crop
    c.data.crop = "none"  # host-side resize on load (folder/tfds): none | resize | center
    c.data.resize_size = placeholder(int)  # center: shorter side resized to this (torchvision Resize)
    c.data.crop_size = placeholder(int)  # center: central square kept; resize: output side
    c.data.interpolation = "bilinear"  # bilinear | bicubic (Pillow, antialiased like torchvision on PIL)
    c.data.decode_workers = -1  # threads decoding each tfds batch; -1 = all CPU cores
    c.data.label_cache = True  # tfds: keep each split's labels in <dataset dir>/lotus_jax_labels/
    c.data.val_fraction = 0.5
    c.data.train_per_class = placeholder(int)  # keep only the first N training images of each class
    c.data.heldout_per_class = placeholder(int)
    c.data.mean = (0.5,)
    c.data.std = (0.5,)
    c.data.augment = "none"  # none | crop | crop_flip: original/gold training only
    c.data.forget = mlc.ConfigDict(dict(mode="fraction", sampling="random", fraction=0.1, classes=0,
                                        ids_file="", per_class=5, retain_per_class=placeholder(int)))

    c.model = mlc.ConfigDict()
    c.model.name = "resnet18"
    c.model.width = 64
    c.model.image_size = placeholder(int)  # model input resolution (resized on device)
    c.model.variant = "B/16"
    c.model.patch_size = placeholder(int)
    c.model.hidden_size = placeholder(int)
    c.model.num_layers = placeholder(int)
    c.model.num_heads = placeholder(int)
    c.model.mlp_dim = placeholder(int)
    c.model.layernorm_epsilon = placeholder(float)
    c.model.representation_size = placeholder(int)  # ViT pre-logits layer (imported checkpoints keep theirs)

    c.train = mlc.ConfigDict(dict(epochs=150, batch_size=512))
    c.train.optimizer = optimizer_config("sgd", 0.1, 5e-4, momentum=0.9, schedule="cosine", warmup_epochs=5, epochs=150)
    c.retrain = mlc.ConfigDict(dict(epochs=150, batch_size=512))
    c.retrain.optimizer = optimizer_config("sgd", 0.1, 5e-4, momentum=0.9, schedule="cosine", warmup_epochs=5,
                                    epochs=150)

    for name, section in default_configs().items():
        c[name] = section
    c.lotus.compat = c.get_ref("compat")

    c.eval = mlc.ConfigDict(dict(batch_size=512, jsd_form="textbook", rf_jsd_unseen="val"))
    return c


def link_epochs(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """Makes each training optimizer's schedule length follow its stage's `epochs` override."""
    for stage in ("train", "retrain"):
        c[stage].optimizer.epochs = c[stage].get_ref("epochs")
    return c
