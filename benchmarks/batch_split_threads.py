"""Prototype, not used by vitkit yet: on the MNIST model, two intra-op threads on a whole batch of 32 against
the batch split over two Python threads with one intra-op thread each (inference, and a training step whose
halves' backward passes accumulate into the same gradients). Round-robin in one process; prints the split's
speed over the whole-batch path per round.

    python benchmarks/batch_split_threads.py
"""
import time, statistics, torch
from concurrent.futures import ThreadPoolExecutor
from vitkit.models import create_model
from vitkit.models.inference import inference_model
torch.manual_seed(0)
m = inference_model(create_model("vit_mnist_patch7_28"))
pool = ThreadPoolExecutor(2)
def intra(x):
    torch.set_num_threads(2); return m(x)
def inter(x):
    torch.set_num_threads(1)
    parts = list(pool.map(m, x.chunk(2)))
    return torch.cat(parts)
def train_intra(model, opt, x, y):
    torch.set_num_threads(2)
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
def train_inter(model, opt, x, y):
    torch.set_num_threads(1)
    opt.zero_grad()
    def half(a):
        xx, yy = a
        (torch.nn.functional.cross_entropy(model(xx), yy) / 2).backward()
    list(pool.map(half, zip(x.chunk(2), y.chunk(2))))
    opt.step()
def rate(fn, *a, secs=1.5):
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < secs:
        fn(*a); n += 1
    return n / (time.perf_counter() - t0)
for b in (32,):
    x = torch.randn(b, 1, 28, 28)
    with torch.inference_mode():
        print("max diff", (intra(x) - inter(x)).abs().max().item())
        r = [rate(intra, x) / rate(inter, x) for _ in range(4)]
    print("inference b", b, "inter/intra speed", [round(1/v, 2) for v in r])
tm = create_model("vit_mnist_patch7_28").train()
opt = torch.optim.AdamW(tm.parameters(), fused=True)
x = torch.randn(32, 1, 28, 28); y = torch.randint(0, 10, (32,))
r = [rate(train_intra, tm, opt, x, y) / rate(train_inter, tm, opt, x, y) for _ in range(4)]
print("train b32 inter/intra speed", [round(1/v, 2) for v in r])
