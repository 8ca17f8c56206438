"""Calibration: per-layer gate thresholds for a target sparsity, from calibration text.

The model runs (transformers, CPU or GPU) on text the project generates
(:mod:`wina_vllm.text`, never the evaluation text); forward hooks on every attention and
MLP projection record a random sample of gate scores. Thresholds are score quantiles at
each projection's sparsity. With ``greedy``, sparsity is allocated across the 7
projections of each decoder layer to minimise the error of the layer's output at the same
parameter-weighted mean sparsity (the TEAL/WINA greedy procedure: :mod:`wina_vllm.greedy`),
then blended with the uniform allocation as far as the whole model's error says it helps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from wina_vllm import calibration_file as cf
from wina_vllm import greedy
from wina_vllm.layers import hf_decoder_layers
from wina_vllm.settings import DEFAULT_CRITERION, PROJECTIONS, uses_norms

HF_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
              "down": "mlp.down_proj"}
SCORE_SAMPLES = 1 << 17  # score values kept per projection (quantile error ~ 1e-3)
GREEDY_WINDOWS = 1  # calibration windows the greedy allocation re-runs each layer on
KL_WINDOWS = 2  # the next windows, on which the greedy's blend with uniform is chosen


@dataclass
class ProjectionSamples:
    """What calibration keeps of one projection's inputs."""

    norms: torch.Tensor  # [K] float32 column norms of the full weight
    weight: torch.Tensor  # [N, K] (a reference, not a copy)
    scores: list[torch.Tensor] = field(default_factory=list)

    def add(self, x: torch.Tensor, normed: bool, generator: torch.Generator) -> None:
        """Keep a sample of the scores of ``x``: ``|x| * norms`` when ``normed``, else ``|x|``."""
        x = x.reshape(-1, x.shape[-1]).float()
        scale = self.norms if normed else torch.ones_like(self.norms)
        score = (x.abs() * scale.to(x.device)).flatten()
        take = min(score.numel(), SCORE_SAMPLES // 8)
        idx = torch.randint(score.numel(), (take,), generator=generator).to(score.device)
        self.scores.append(score[idx].cpu())

    def score_sample(self) -> torch.Tensor:
        s = torch.cat(self.scores)
        return s[torch.randperm(s.numel())[:SCORE_SAMPLES]] if s.numel() > SCORE_SAMPLES else s


def quantile(sample: torch.Tensor, q: float) -> float:
    if q <= 0:
        return 0.0
    return float(torch.quantile(sample.double(), q).item()) if sample.numel() <= 1 << 24 else \
        float(sample.double().sort().values[int(q * (sample.numel() - 1))])


def thresholds_from_samples(layers: list[dict[str, ProjectionSamples]], target: float,
                            allocations: list[dict[str, float]] | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """[L, 7] thresholds and sparsities: the target everywhere, or per layer and projection
    from ``allocations`` (greedy)."""
    n = len(layers)
    thresholds = torch.zeros(n, len(PROJECTIONS))
    sparsity = torch.zeros(n, len(PROJECTIONS))
    for i, layer in enumerate(layers):
        alloc = allocations[i] if allocations else dict.fromkeys(PROJECTIONS, target)
        for j, p in enumerate(PROJECTIONS):
            sparsity[i, j] = alloc[p]
            thresholds[i, j] = quantile(layer[p].score_sample(), alloc[p])
    return thresholds, sparsity


def norm_means(layers: list[dict[str, ProjectionSamples]]) -> torch.Tensor:
    return torch.tensor([[float(layer[p].norms.mean()) for p in PROJECTIONS] for layer in layers])


def collect_hf(model: torch.nn.Module, texts: list[torch.Tensor], criterion: str,
               progress: Callable | None = None, seed: int = 0) -> list[dict[str, ProjectionSamples]]:
    """Run a transformers decoder on token batches; return per-layer projection samples."""
    decoder_layers = hf_decoder_layers(model)
    gen = torch.Generator().manual_seed(seed)
    layers: list[dict[str, ProjectionSamples]] = []
    handles = []
    for layer in decoder_layers:
        entry: dict[str, ProjectionSamples] = {}
        for p, path in HF_MODULES.items():
            module = layer.get_submodule(path)
            w = module.weight.detach()
            entry[p] = ProjectionSamples(norms=w.float().norm(dim=0).cpu(), weight=w)
            handles.append(module.register_forward_pre_hook(
                lambda mod, args, s=entry[p], n=uses_norms(criterion, p):
                s.add(args[0].detach(), n, gen)))
        layers.append(entry)
    try:
        with torch.no_grad():
            for ids in (progress(texts) if progress else texts):
                model(input_ids=ids.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return layers


def load_hf_model(path: str, gguf_file: str | None = None, dtype: torch.dtype = torch.float32,
                  device: str = "cpu"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(path, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw).to(device).eval()
    return model, tok


def token_windows(tok, text: str, window: int, count: int) -> list[torch.Tensor]:
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    n = min(count, ids.numel() // window)
    if n == 0:
        raise ValueError(f"calibration text has {ids.numel()} tokens, fewer than one "
                         f"window of {window}")
    return [ids[i * window:(i + 1) * window].unsqueeze(0) for i in range(n)]


def calibrate_many(model_path: str, out_dir: str | Path, sparsities: list[float],
                   criterion: str = DEFAULT_CRITERION, greedy_options: tuple[bool, ...] = (False,),
                   text: str | None = None, gguf_file: str | None = None, window: int = 512,
                   windows: int = 16, device: str = "cpu",
                   blend: bool = True) -> dict[tuple[float, bool], Path]:
    """One calibration pass, files for several sparsities: ``<criterion>-<s>[-greedy].safetensors``.

    ``blend``: blend each greedy allocation with uniform (:mod:`wina_vllm.greedy`)."""
    from tqdm import tqdm

    from wina_vllm.settings import parse_settings
    from wina_vllm.text import stdlib_prose

    for s in sparsities:
        parse_settings({"sparsity": s, "criterion": criterion})  # same checks as serving
    model, tok = load_hf_model(model_path, gguf_file, device=device)
    batches = token_windows(tok, text if text is not None else stdlib_prose(), window, windows)
    layers = collect_hf(model, batches, criterion,
                        progress=lambda it: tqdm(it, desc="calibration forward", unit="window"))
    nm = norm_means(layers)
    fingerprint = cf.model_fingerprint(model.config, nm)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    allocation = None
    if True in greedy_options:
        allocation = greedy.allocate(
            model, batches[:GREEDY_WINDOWS], layers, sparsities, criterion,
            lambda layer: {p: layer.get_submodule(HF_MODULES[p]) for p in PROJECTIONS},
            quantile, progress=lambda it: tqdm(it, desc="greedy allocation", unit="layer"),
            kl_texts=batches[GREEDY_WINDOWS:GREEDY_WINDOWS + KL_WINDOWS] or None, blend=blend)
    for use_greedy in greedy_options:
        for s in sparsities:
            thresholds, sp = thresholds_from_samples(
                layers, s, allocation.at(s) if use_greedy else None)
            path = out / f"{criterion}-{s}{'-greedy' if use_greedy else ''}.safetensors"
            cf.save(path, cf.Calibration(thresholds=thresholds, sparsity=sp, norm_mean=nm,
                                         criterion=criterion, target_sparsity=s,
                                         greedy=use_greedy, fingerprint=fingerprint,
                                         greedy_blend=allocation.blend[s] if use_greedy else None))
            written[(s, use_greedy)] = path
    return written


def calibrate(model_path: str, out: str | Path, sparsity: float, criterion: str = DEFAULT_CRITERION,
              greedy: bool = False, text: str | None = None, gguf_file: str | None = None,
              window: int = 512, windows: int = 16, device: str = "cpu",
              blend: bool = True) -> cf.Calibration:
    """Calibrate a transformers checkpoint and write one calibration file to ``out``."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (path,) = calibrate_many(model_path, tmp, [sparsity], criterion, (greedy,), text,
                                 gguf_file, window, windows, device, blend).values()
        shutil.move(str(path), str(out))
    return cf.load(out)


# -- calibration inside vLLM (any model vLLM loads, dummy weights included) -----------------
def _record_inputs(model: torch.nn.Module, max_rows: int) -> int:
    """Forward pre-hooks on every gated linear keep up to ``max_rows`` of its inputs."""
    from wina_vllm.layers import match_target

    count = 0
    for name, module in model.named_modules():
        if match_target(name) is None or not hasattr(module, "output_partition_sizes"):
            continue
        module._wina_rows = []

        def hook(mod, args):
            kept = sum(r.shape[0] for r in mod._wina_rows)
            if kept < max_rows:
                mod._wina_rows.append(args[0].detach().reshape(-1, args[0].shape[-1])
                                      [: max_rows - kept].float().clone())

        module._wina_hook = module.register_forward_pre_hook(hook)
        count += 1
    return count


def _tables_from_inputs(model: torch.nn.Module, criteria: list[str],
                        sparsities: list[float]) -> dict:
    """Per criterion and sparsity: [L, 7] thresholds; plus the [L, 7] weight signature."""
    from wina_vllm.gate import column_scales
    from wina_vllm.layers import match_target

    found = [(match_target(n), m) for n, m in model.named_modules()
             if match_target(n) is not None and hasattr(m, "_wina_rows")]
    layers = 1 + max(t.layer_index for t, _ in found)
    norm_mean = torch.zeros(layers, len(PROJECTIONS))
    tables = {(c, s): torch.zeros(layers, len(PROJECTIONS)) for c in criteria for s in sparsities}
    for target, module in found:
        module._wina_hook.remove()
        x = torch.cat(module._wina_rows)
        del module._wina_rows
        if module.weight.dim() != 2:
            raise ValueError(f"calibrate_vllm: {type(module).__name__} holds no [N, K] weight "
                             "(vLLM's CPU backend repacks it); calibrate with transformers "
                             "on the CPU (wina-vllm calibrate MODEL)")
        norms = column_scales(module.weight.data, module.output_partition_sizes, "wina")
        for j, p in enumerate(target.projections):
            col = PROJECTIONS.index(p)
            norm_mean[target.layer_index, col] = float(norms[j].mean())
            qs = torch.tensor(sparsities, dtype=torch.float32, device=x.device)
            for c in criteria:
                score = (x.abs() * norms[j]) if uses_norms(c, p) else x.abs()
                flat = score.flatten().float()
                if flat.numel() > SCORE_SAMPLES * 8:
                    flat = flat[torch.randint(flat.numel(), (SCORE_SAMPLES * 8,),
                                              device=flat.device)]
                values = torch.quantile(flat, qs).cpu()  # one sort for every sparsity
                for s, v in zip(sparsities, values.tolist()):
                    tables[(c, s)][target.layer_index, col] = v if s > 0 else 0.0
    return {"norm_mean": norm_mean, "tables": {f"{c}:{s}": t for (c, s), t in tables.items()}}


def calibrate_vllm(llm, prompts: list[list[int]], criteria: list[str], sparsities: list[float],
                   out_dir: str | Path, max_rows: int = 1024, decode_tokens: int = 16) -> list[Path]:
    """Calibrate a dense vLLM engine (``enforce_eager=True``, so hooks run) on token prompts.

    Writes one file per (criterion, sparsity): ``<criterion>-<sparsity>.safetensors``.
    """
    from vllm import SamplingParams

    tp = llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size
    if tp != 1:  # each worker would see only its shard of o's and down's inputs
        raise ValueError(f"calibrate_vllm: tensor_parallel_size is {tp}; calibrate on one GPU "
                         "(1): the file holds whole-model thresholds and serves any TP size")
    if not llm.apply_model(lambda model: _record_inputs(model, max_rows))[0]:
        raise ValueError("calibrate_vllm: no gated linears found; is the model supported and "
                         "the engine dense (no --quantization)?")
    llm.generate([{"prompt_token_ids": p} for p in prompts],
                 SamplingParams(max_tokens=decode_tokens, ignore_eos=True), use_tqdm=False)
    result = llm.apply_model(lambda model: _tables_from_inputs(model, criteria, sparsities))[0]
    hf_config = llm.llm_engine.model_config.hf_config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, thresholds in result["tables"].items():
        criterion, s = key.split(":")
        cal = cf.Calibration(thresholds=thresholds,
                             sparsity=torch.full_like(thresholds, float(s)),
                             norm_mean=result["norm_mean"], criterion=criterion,
                             target_sparsity=float(s), greedy=False,
                             fingerprint=cf.model_fingerprint(hf_config, result["norm_mean"]))
        path = out / f"{criterion}-{s}.safetensors"
        cf.save(path, cal)
        paths.append(path)
    return paths
