import torch

from trimtune.data.digits import load_digits_split
from trimtune.models import LeNet


def test_digits_split_is_seeded_stratified_and_disjoint():
    x_train, y_train, x_test, y_test = load_digits_split(seed=0)
    assert x_train.shape[1:] == (1, 8, 8) and 0 <= x_train.min() and x_train.max() <= 1
    assert len(x_train) + len(x_test) == 1797 and abs(len(x_test) - 0.25 * 1797) < 1
    assert set(y_test.tolist()) == set(range(10))
    again = load_digits_split(seed=0)
    assert torch.equal(again[0], x_train) and torch.equal(again[3], y_test)


def test_lenet_learns_digits_quickly():
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits_split()
    model = LeNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(8):
        for i in range(0, len(x_train), 64):
            loss = torch.nn.functional.cross_entropy(model(x_train[i : i + 64]), y_train[i : i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.9
