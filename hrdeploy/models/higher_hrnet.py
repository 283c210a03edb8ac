"""HigherHRNet (Cheng et al., CVPR 2020): bottom-up pose with a deconvolution head on HRNet.

Follows HRNet/HigherHRNet-Human-Pose-Estimation `lib/models/pose_higher_hrnet.py` (PoseHigherResolutionNet)
with the COCO configs `experiments/coco/higher_hrnet/w{32_512,32_640,48_640}_adam_lr1e-3.yaml`:
DECONV NUM_DECONVS 1, NUM_CHANNELS [W], KERNEL_SIZE 4 (padding 1, output_padding 0), NUM_BASIC_BLOCKS 4,
CAT_OUTPUT [True]; TAG_PER_JOINT True; LOSS.WITH_AE_LOSS [True, False]; FINAL_CONV_KERNEL 1.

The backbone is pose HRNet's (hrdeploy.models.hrnet, stage 4 single-scale). Outputs:
`final_layers[0]` on the 1/4 map gives K heatmaps + K tag maps; the deconv input is concat(x, that), the
deconv block (ConvTranspose2d k4 s2, BN, ReLU, then 4 BasicBlocks each wrapped in its own Sequential)
doubles the resolution and `final_layers[1]` gives K heatmaps at 1/2.
"""

from __future__ import annotations

import torch
from torch import nn

from hrdeploy.models.hrnet import BN_MOMENTUM, BasicBlock, HighResolutionNet, HRNetCfg, hrnet_cfg
from hrdeploy.registry import Published, register_model

_DECONV_CFG = {4: (1, 0), 3: (1, 1), 2: (0, 0)}  # kernel -> (padding, output_padding), as _get_deconv_cfg


class PoseHigherResolutionNet(HighResolutionNet):
    def __init__(
        self,
        cfg: HRNetCfg,
        num_joints: int,
        deconv_channels: tuple[int, ...],
        deconv_kernels: tuple[int, ...] = (4,),
        num_basic_blocks: int = 4,
        cat_output: tuple[bool, ...] = (True,),
        with_ae_loss: tuple[bool, ...] = (True, False),
        tag_per_joint: bool = True,
        final_conv_kernel: int = 1,
    ) -> None:
        super().__init__(cfg, multi_scale_output=False)
        self.num_deconvs = len(deconv_channels)
        self.cat_output = cat_output
        dim_tag = num_joints if tag_per_joint else 1
        out_ch = [num_joints + dim_tag if ae else num_joints for ae in with_ae_loss]
        pad = 1 if final_conv_kernel == 3 else 0

        in_ch = [self.out_channels[0], *deconv_channels]
        self.final_layers = nn.ModuleList(
            nn.Conv2d(in_ch[i], out_ch[i], final_conv_kernel, 1, pad) for i in range(self.num_deconvs + 1)
        )

        self.deconv_layers = nn.ModuleList()
        channels = self.out_channels[0]
        for i in range(self.num_deconvs):
            if cat_output[i]:
                channels += out_ch[i]
            c = deconv_channels[i]
            padding, output_padding = _DECONV_CFG[deconv_kernels[i]]
            layers: list[nn.Module] = [
                nn.Sequential(
                    nn.ConvTranspose2d(
                        channels, c, deconv_kernels[i], stride=2, padding=padding,
                        output_padding=output_padding, bias=False,
                    ),
                    nn.BatchNorm2d(c, momentum=BN_MOMENTUM),
                    nn.ReLU(inplace=True),
                )
            ]
            layers += [nn.Sequential(BasicBlock(c, c)) for _ in range(num_basic_blocks)]
            self.deconv_layers.append(nn.Sequential(*layers))
            channels = c

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.forward_features(x)[0]
        y = self.final_layers[0](x)
        outputs = [y]
        for i in range(self.num_deconvs):
            if self.cat_output[i]:
                x = torch.cat((x, y), 1)
            x = self.deconv_layers[i](x)
            y = self.final_layers[i + 1](x)
            outputs.append(y)
        return tuple(outputs)


_UPSTREAM = "HRNet/HigherHRNet-Human-Pose-Estimation lib/models/pose_higher_hrnet.py"
_README = "HRNet/HigherHRNet-Human-Pose-Estimation README (COCO val2017, single scale)"
_FIELDS = dict(
    family="higher_hrnet",
    task="pose_bottomup",
    datasets=("coco",),
    stride=32,
    output_names=("heatmaps_tags", "heatmaps_highres"),
    output_strides=(4, 2),
    upstream=_UPSTREAM,
)


@register_model(
    name="higher_hrnet_w32",
    default_input_size=(512, 512),
    published=(
        Published((512, 512), 28.6e6, 47.9e9, "COCO val AP 67.1", _README),
        Published((640, 640), 28.6e6, 74.8e9, "COCO val AP 68.5", _README),
    ),
    **_FIELDS,
)
def higher_hrnet_w32(num_outputs: int) -> PoseHigherResolutionNet:
    return PoseHigherResolutionNet(hrnet_cfg(32), num_outputs, deconv_channels=(32,))


@register_model(
    name="higher_hrnet_w48",
    default_input_size=(640, 640),
    published=(Published((640, 640), 63.8e6, 154.3e9, "COCO val AP 69.9", _README),),
    **_FIELDS,
)
def higher_hrnet_w48(num_outputs: int) -> PoseHigherResolutionNet:
    return PoseHigherResolutionNet(hrnet_cfg(48), num_outputs, deconv_channels=(48,))
