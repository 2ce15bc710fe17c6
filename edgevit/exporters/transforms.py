"""Graph-identical rewrites applied to a copy of the model before export."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy with every ``Conv2d`` directly followed by ``BatchNorm2d`` (inside a
    Sequential) folded into the convolution.

    Every runtime gets one Conv instead of Conv + BatchNormalization; ORT and OpenVINO would fuse them
    too, but mobile converters and NPUs often do not. Identical up to fp32 rounding.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[first] = fuse_conv_bn_eval(conv, bn)
                module._modules[second] = nn.Identity()
    return folded
