"""The paper's CNN (port of AED_train.buildModel). It returns logits: softmax (sigmoid for
multi-label) gives the original's outputs."""
from torch import nn

# Lasagne's BatchNormLayer defaults: epsilon 1e-4, running-average alpha 0.1
BN_EPS = 1e-4
BN_MOMENTUM = 0.1

# (filter multiplier, kernel size, stride) of the five conv blocks
CONV_BLOCKS = ((1, 7, 2), (2, 5, 1), (4, 3, 1), (8, 3, 1), (16, 3, 1))
DENSE_UNITS = 512

ACTIVATIONS = {'relu': nn.ReLU, 'elu': nn.ELU, 'leaky_relu': nn.LeakyReLU}


def flat_size(im_size, filters):
    """Features after the last pool, for im_size=(width, height)."""
    w, h = im_size
    for _, kernel, stride in CONV_BLOCKS:
        # 'same' padding: ceil(size / stride); then a 2x2 pool that drops the odd edge
        w, h = -(-w // stride) // 2, -(-h // stride) // 2
    if w < 1 or h < 1:
        raise ValueError(f'image size {im_size} is too small for five pooling stages '
                         f'(use at least 64x64)')
    return filters * CONV_BLOCKS[-1][0] * w * h


class AEDNet(nn.Module):
    def __init__(self, num_classes, im_size=(512, 256), im_dim=1, filters=64,
                 dropout=0.5, nonlinearity='relu', init_gain=2 ** 0.5):
        super().__init__()
        act = ACTIVATIONS[nonlinearity]
        layers, channels = [], im_dim
        for mult, kernel, stride in CONV_BLOCKS:
            out = filters * mult
            # no bias before a batch norm, as Lasagne's batch_norm() removes it
            layers += [nn.Conv2d(channels, out, kernel, stride=stride, padding=kernel // 2, bias=False),
                       nn.BatchNorm2d(out, eps=BN_EPS, momentum=BN_MOMENTUM), act(),
                       nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat_size(im_size, filters), DENSE_UNITS, bias=False),
            nn.BatchNorm1d(DENSE_UNITS, eps=BN_EPS, momentum=BN_MOMENTUM), act(), nn.Dropout(dropout),
            nn.Linear(DENSE_UNITS, DENSE_UNITS, bias=False),
            nn.BatchNorm1d(DENSE_UNITS, eps=BN_EPS, momentum=BN_MOMENTUM), act(), nn.Dropout(dropout))
        self.output = nn.Linear(DENSE_UNITS, num_classes)
        self.reset_parameters(init_gain)

    def reset_parameters(self, gain):
        """He-normal weights (std = gain / sqrt(fan_in)); gain 1 and zero bias at the output."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                g = 1.0 if m is self.output else gain
                nn.init.normal_(m.weight, 0.0, g / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):  # (B, C, H, W) -> (B, classes) logits
        return self.output(self.classifier(self.features(x)))


def count_params(net):
    """Trainable parameters, as Lasagne's count_params(trainable=True)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def weighted_layers(net):
    """Convolution and dense layers, the layers the original counted as weighted."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in net.modules())
