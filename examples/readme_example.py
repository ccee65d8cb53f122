import torch
from torch import nn

import bnn_export
from bnn_export.datasets import load_dataset

model = nn.Sequential(  # your own network: plain PyTorch layers
    nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),  # stays float (first)
    nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.MaxPool2d(2),
    nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(64 * 2 * 2, 10),  # stays float (last)
)  # fmt: skip
bnn_export.binarize_(model, "irnet")  # the two inner convs become BinaryConv2d

data = load_dataset("digits")  # scikit-learn's 8x8 digits, no download
x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for epoch in range(3):  # your own training loop
    bnn_export.step_schedule(model, epoch, 3)  # IR-Net's EDE schedule
    for i in range(0, len(x), 64):
        loss = nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()

report = bnn_export.export(model.eval(), "digits.onnx", input_shape=(1, 8, 8),
                           validation=(data.x_test, data.y_test))  # fmt: skip
logits = bnn_export.load("digits.onnx").predict(data.x_test)  # our xor/popcount kernels
print(f"{report.binary_ops} binary ops, agreement {report.numbers['agreement']:.2%}")
print(f"test accuracy {(logits.argmax(1) == data.y_test).mean():.2%}")
