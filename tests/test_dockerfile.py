"""The GPU image installs a working project: the files the Dockerfile's COPY lines put into the image (the
``.dockerignore`` honoured) build a wheel whose console scripts and packages run on their own.

No Docker daemon is needed: the COPY lines are replayed into a temporary folder, the wheel is built from it as the
image's ``pip install .`` builds it, installed without dependencies into a fresh virtual environment that sees this
one's dependencies but not this checkout (the editable install's finder is not loaded there), and run from a
folder outside the repository.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full, pending = pending + line, ""
        word, _, rest = full.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus ``**``, relative to the context root) as a regex."""
    if "[" in pattern or "\\" in pattern:
        raise AssertionError(f".dockerignore pattern {pattern!r}: character classes are not replayed by this test")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _ignore_rules(context: Path) -> list[tuple[re.Pattern[str], bool]]:
    """(pattern, excludes) per .dockerignore line, in order: the last rule matching a path decides."""
    path = context / ".dockerignore"
    rules = []
    for line in (path.read_text().splitlines() if path.is_file() else []):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        cleaned = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((_pattern(cleaned), not keep))
    return rules


def _ignored(rel: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Docker's rule: a pattern matching the path or one of its parent folders applies; the last one wins."""
    parts = PurePosixPath(rel).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern, excludes in rules:
        if any(pattern.match(c) for c in candidates):
            ignored = excludes
    return ignored


def _context_files(context: Path, source: str, rules) -> list[tuple[Path, PurePosixPath]]:
    """(file, its path below ``source``) of every file of ``source`` in the build context that is not ignored."""
    src = (context / source).resolve()
    assert src == context or context in src.parents, f"COPY {source}: outside the build context"
    if src.is_file():
        rel = src.relative_to(context).as_posix()
        return [] if _ignored(rel, rules) else [(src, PurePosixPath(src.name))]
    assert src.is_dir(), f"COPY {source}: not in the build context"
    negations = any(not excludes for _, excludes in rules)
    found = []
    for folder, dirs, files in os.walk(src):
        here = Path(folder)
        if not negations:  # an ignored folder holds nothing to copy unless a ! rule takes something back
            dirs[:] = [d for d in dirs if not _ignored((here / d).relative_to(context).as_posix(), rules)]
        for name in files:
            path = here / name
            if not path.is_symlink() and not _ignored(path.relative_to(context).as_posix(), rules):
                found.append((path, PurePosixPath(path.relative_to(src).as_posix())))
    return found


def replay_copies(dockerfile: Path, context: Path, image_root: Path) -> PurePosixPath:
    """Copy what each COPY line of ``dockerfile`` puts into the image under ``image_root``; returns the WORKDIR in
    which the image runs ``pip install .``."""
    rules = _ignore_rules(context)
    workdir, install_dir = PurePosixPath("/"), None
    for word, args in _instructions(dockerfile):
        if word == "WORKDIR":
            workdir = workdir / args
        elif word == "COPY":
            items = [a for a in (json.loads(args) if args.startswith("[") else shlex.split(args))
                     if not a.startswith("--")]  # options such as --chown do not change which files
            *sources, dest = items
            target = workdir / dest
            into_folder = dest.endswith("/") or len(sources) > 1 or dest in (".", "./")
            for source in sources:
                is_dir = (context / source).is_dir()
                for path, rel in _context_files(context, source, rules):
                    where = (target / rel if is_dir else target / rel.name if into_folder else target)
                    out = image_root / where.relative_to("/")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, out)
        elif word == "RUN" and re.search(r"pip install\b[^&;|]*\s[\"']?\.(\[[^\]]*\])?[\"']?(\s|$)", args):
            install_dir = workdir
    assert install_dir is not None, f"{dockerfile}: no `RUN pip install .` line found"
    return install_dir


def _fresh_venv(folder: Path) -> Path:
    """A virtual environment without pip whose only extra path is this environment's site-packages (a path line
    in a .pth file: the .pth files there, among them the editable install's finder, are not run)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, encoding="utf-8", errors="replace").stdout.strip()
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    Path(purelib, "zz_project_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    return python


def test_the_image_files_build_a_project_whose_commands_run(tmp_path):
    image = tmp_path / "image"
    install_dir = replay_copies(ROOT / "Dockerfile", ROOT, image)
    src = image / install_dir.relative_to("/")
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(src)], capture_output=True, encoding="utf-8", errors="replace")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    [wheel] = wheels.glob("med3d-*.whl")
    python = _fresh_venv(tmp_path / "venv")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                              str(wheel)], capture_output=True, encoding="utf-8", errors="replace")
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    away = tmp_path / "elsewhere"  # not the repository: its source tree must not be importable
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONIOENCODING"] = "utf-8"  # the help texts hold × and ³ whatever the caller's locale
    where = subprocess.run(
        [str(python), "-c", "import volume, runlog, pipeline.cli, model.cli, catalog; "
         "print('\\n'.join(m.__file__ for m in (volume, runlog, pipeline.cli, model.cli, catalog)))"],
        cwd=away, env=env, capture_output=True, encoding="utf-8", errors="replace")
    assert where.returncode == 0, where.stderr[-3000:]
    venv = (tmp_path / "venv").resolve()
    assert all(venv in Path(f).resolve().parents for f in where.stdout.split()), where.stdout
    for command in ("med3d-prep", "med3d-train"):
        res = subprocess.run([str(python.parent / command), "--help"], cwd=away, env=env, capture_output=True,
                             encoding="utf-8", errors="replace")
        assert res.returncode == 0 and "Usage:" in res.stdout, (command, res.stderr[-3000:])
