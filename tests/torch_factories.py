"""``package.module:factory`` sources for the PyTorch -> TFLite tests and benchmark: the models
tests/test_onnx_to_tf.py builds, with fixed seeds and BatchNorm statistics that are not the identity."""
from __future__ import annotations

import torch

from test_onnx_to_tf import CNN, Block, Recurrent


def _ready(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return module.eval()


def cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return _ready(CNN())


def block() -> torch.nn.Module:
    torch.manual_seed(0)
    return _ready(Block())


def recurrent() -> torch.nn.Module:
    torch.manual_seed(0)
    return _ready(Recurrent())


class SileroVAD16k(torch.nn.Module):
    """Silero VAD v6 at 16 kHz, in PyTorch: the architecture of silero_vad/tinygrad_model.py
    (the package ships it for tinygrad, with the trained weights as silero_vad_16k.safetensors,
    whose tensor names these modules carry). Input: 64 samples of context + a 512-sample chunk;
    the LSTM state goes in and comes out, as in the package's ONNX model."""

    def __init__(self):
        super().__init__()
        self.stft_conv = torch.nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
        self.conv1 = torch.nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = torch.nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = torch.nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = torch.nn.Conv1d(64, 128, 3, padding=1)
        self.lstm_cell = torch.nn.LSTMCell(128, 128)
        self.final_conv = torch.nn.Conv1d(128, 1, 1)

    def forward(self, x, state):
        x = torch.nn.functional.pad(x, (0, 64), "reflect").unsqueeze(1)
        x = self.stft_conv(x)
        x = (x[:, :129, :] ** 2 + x[:, 129:, :] ** 2).sqrt()
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = conv(x).relu()
        h, c = self.lstm_cell(x.squeeze(-1), (state[0], state[1]))
        prob = self.final_conv(h.unsqueeze(-1).relu()).sigmoid().squeeze(1).mean(1, keepdim=True)
        return prob, torch.stack([h, c])


def silero_vad_16k() -> torch.nn.Module:
    return SileroVAD16k().eval()


class Guarded(torch.nn.Module):
    """A condition on the data (always true): torch.export cannot decide it, a trace can."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        if x.abs().sum() >= 0:
            return torch.relu(self.fc(x))
        return self.fc(x)


def guarded() -> torch.nn.Module:
    torch.manual_seed(0)
    return Guarded().eval()


class Inverse(torch.nn.Module):
    """torch.export captures ``linalg.inv``; litert-torch has no lowering for it."""

    def forward(self, x):
        return torch.linalg.inv(x @ x.transpose(-1, -2) + torch.eye(x.shape[-1]))


def inverse() -> torch.nn.Module:
    return Inverse()
