"""The web UI's listings of extra networks: `/sdapi/v1/embeddings`, `/loras`, `/hypernetworks`, `/sd-vae`, and
`POST /sdapi/v1/refresh-embeddings`, `/refresh-loras`, `/refresh-hypernetworks`, which read the directories again so
new files are used without a restart.

They answer in the web UI's shapes, from what the pipeline loaded: its textual-inversion embeddings
(`embeddings_dir`), its LoRA directory (`lora_dir`), its hypernetwork directory (`hypernetwork_dir`) and the VAE
each artifact was exported with (`sdrt export --vae`; the VAE is part of an artifact, so there is nothing to
switch to per request). Paths are given relative to their directory: the server's file system stays private.
A refresh reads the files in a worker thread and swaps the new listing in at once: a batch already running
keeps what it started with; a request queued before the refresh reads the new one when its batch starts.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

router = APIRouter(prefix="/sdapi/v1")


@router.get("/embeddings")
async def embeddings(http: Request) -> dict:
    """{"loaded": {name: {step, sd_checkpoint, sd_checkpoint_name, shape, vectors}}, "skipped": {...}}."""
    library = http.app.state.sdrt.require_pipeline().model.embeddings
    loaded = {
        name: {
            "step": e.step,
            "sd_checkpoint": e.sd_checkpoint,
            "sd_checkpoint_name": e.sd_checkpoint_name,
            "shape": e.shape,
            "vectors": e.num_vectors,
        }
        for name, e in sorted(library.loaded.items())
    }
    # the web UI lists a skipped embedding with the same fields; sdrt also says why it was skipped
    skipped = {
        name: {
            "step": None,
            "sd_checkpoint": None,
            "sd_checkpoint_name": None,
            "shape": None,
            "vectors": None,
            "reason": why,
        }  # fmt: skip
        for name, why in sorted(library.skipped.items())
    }
    return {"loaded": loaded, "skipped": skipped}


@router.get("/loras")
async def loras(http: Request) -> list[dict]:
    """[{name, alias, path, metadata}] as the web UI's Lora extension lists them."""
    library = http.app.state.sdrt.require_pipeline().loras
    out = []
    for name, path in sorted(library.files.items()):
        metadata = library.metadata(name)
        out.append(
            {
                "name": name,
                "alias": metadata.get("ss_output_name", name),
                "path": str(path.relative_to(library.directory)),
                "metadata": metadata,
            }
        )
    return out


@router.get("/hypernetworks")
async def hypernetworks(http: Request) -> list[dict]:
    """[{name, path}] as the web UI lists them (paths relative to the hypernetwork directory)."""
    library = http.app.state.sdrt.require_pipeline().hypernetworks
    return [
        {"name": name, "path": str(path.relative_to(library.directory))} for name, path in sorted(library.files.items())
    ]


@router.post("/refresh-embeddings")
async def refresh_embeddings(http: Request) -> None:
    """Read the embeddings directory again (the web UI answers null)."""
    await run_in_threadpool(http.app.state.sdrt.require_pipeline().refresh_embeddings)


@router.post("/refresh-loras")
async def refresh_loras(http: Request) -> None:
    """Read the LoRA directory again (the web UI answers null)."""
    await run_in_threadpool(http.app.state.sdrt.require_pipeline().refresh_loras)


@router.post("/refresh-hypernetworks")
async def refresh_hypernetworks(http: Request) -> None:
    """Read the hypernetwork directory again."""
    await run_in_threadpool(http.app.state.sdrt.require_pipeline().refresh_hypernetworks)


@router.get("/sd-vae")
async def sd_vae(http: Request) -> list[dict]:
    """[{model_name, filename}]: the VAE each loaded artifact was exported with, when it was swapped in."""
    pipe = http.app.state.sdrt.require_pipeline()
    seen: dict[str, dict] = {}
    for model in pipe.models:
        vae = model.manifest.vae
        if vae is not None:
            seen.setdefault(vae["name"], {"model_name": vae["name"], "filename": vae["name"]})
    return list(seen.values())
