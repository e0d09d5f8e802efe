"""NAGGS on CUDA: every path against the CPU float64 reference, fp16 AMP, device moves. Skips without a GPU."""

import pytest
import torch

from naggs_lightning import NAGGS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _run(params, grads, **kwargs):
    opt = NAGGS(params, lr=0.5, mu=0.1, gamma=2.0, weight_decay=0.01, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.to(p.device, p.dtype)
        opt.step()
    return opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("path", [{"foreach": False}, {"foreach": True}, {"fused": True}, {}])
def test_cuda_paths_track_the_cpu_float64_reference(dtype, path):
    g = torch.Generator().manual_seed(0)
    shapes = [(257,), (64, 33), (3, 5, 7)]
    x0 = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(15)]
    cuda = [torch.nn.Parameter(x.to("cuda", dtype)) for x in x0]
    ref = [torch.nn.Parameter(x.clone()) for x in x0]
    _run(cuda, grads, **path)
    _run(ref, grads, foreach=False)
    eps = torch.finfo(dtype).eps
    for p, q in zip(cuda, ref):
        torch.testing.assert_close(p.detach().cpu().double(), q.detach(), rtol=16 * eps, atol=16 * eps)


def test_fused_is_the_default_on_cuda_and_handles_mixed_dtype_groups():
    params = [torch.nn.Parameter(torch.ones(100, device="cuda", dtype=d)) for d in (torch.float32, torch.bfloat16)]
    opt = NAGGS([{"params": params[:1]}, {"params": params[1:], "mu": 0.5}], lr=0.2)
    for p in params:
        p.grad = torch.ones_like(p)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    fused_calls = [e for e in prof.events() if e.name == "aten::_fused_sgd_"]
    assert len(fused_calls) == 2  # one launch per group (each group is one dtype here)
    assert all(torch.isfinite(p).all() for p in params)


def test_fp16_grad_scaler_skip_leaves_state_untouched():
    model = torch.nn.Linear(16, 4).cuda()
    opt = NAGGS(model.parameters(), lr=0.3, mu=0.2, gamma=3.0)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(8, 16, device="cuda")
    for poison in (False, True):
        before = [p.detach().clone() for p in model.parameters()]
        bufs = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()] if opt.state else None
        gamma = opt.param_groups[0]["gamma"]
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(x).float().pow(2).mean() * (float("inf") if poison else 1.0)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert opt.param_groups[0]["gamma"] == gamma
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(torch.equal(opt.state[p]["momentum_buffer"], b) for p, b in zip(model.parameters(), bufs))


def test_state_dict_moves_from_cpu_to_cuda_and_continues_identically():
    torch.manual_seed(0)
    cpu = torch.nn.Linear(8, 2).double()
    gpu = torch.nn.Linear(8, 2).double().cuda()
    gpu.load_state_dict(cpu.state_dict())
    oc = NAGGS(cpu.parameters(), lr=0.3, mu=0.2, gamma=3.0, foreach=False)
    x = torch.randn(16, 8, dtype=torch.float64)
    for _ in range(3):
        oc.zero_grad()
        cpu(x).pow(2).mean().backward()
        oc.step()
    gpu.load_state_dict(cpu.state_dict())
    og = NAGGS(gpu.parameters(), lr=0.3, mu=0.2, gamma=3.0, foreach=False)
    og.load_state_dict(oc.state_dict())
    assert og.state[gpu.weight]["momentum_buffer"].is_cuda
    for model, opt, inp in ((cpu, oc, x), (gpu, og, x.cuda())):
        for _ in range(3):
            opt.zero_grad()
            model(inp).pow(2).mean().backward()
            opt.step()
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        torch.testing.assert_close(p, q.cpu(), rtol=1e-12, atol=1e-14)
