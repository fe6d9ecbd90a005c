"""Source trees: a download seen as relative file paths, whether it is a folder, a zip or a tar archive.

Archives are only listed to find and fingerprint the cases (cheap); members are extracted when a case needs them,
into a staging folder under the destination that is removed when the import ends. Every member name is checked
while listing, before anything is written: an absolute path, a `..` part, a link or a special file stops the
import with a message naming the archive and the member, so nothing can be written outside the staging folder.
"""

from __future__ import annotations

import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from covlight.atomic import replacing
from covlight.errors import DatasetError

ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, ValueError)


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ZIP_SUFFIXES + TAR_SUFFIXES)


def normalised(name: str) -> str:
    """A file or folder name reduced for matching: archive suffix dropped, lower case, runs of other characters
    as one underscore (`PleThora Thoracic_Cavities June 2020.zip` -> `plethora_thoracic_cavities_june_2020`)."""
    lower = name.lower()
    for suffix in sorted(ZIP_SUFFIXES + TAR_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
            break
    return re.sub(r"[^a-z0-9]+", "_", lower).strip("_")


def _skipped(name: str) -> bool:
    """Operating-system clutter that archives often carry (macOS resource forks, Finder files)."""
    parts = name.split("/")
    return parts[0] == "__MACOSX" or parts[-1].startswith("._") or parts[-1] in (".DS_Store", "Thumbs.db")


class Staging:
    """A temporary folder under the destination for extracted members; removed when the import ends."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._folder: Path | None = None

    def folder(self) -> Path:
        if self._folder is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._folder = Path(tempfile.mkdtemp(prefix=".covlight-extract-", dir=self.root))
        return self._folder

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class SourceRef:
    """One file (or, for a DICOM series, one folder) of a source tree."""

    tree: SourceTree
    relpath: str
    is_dir: bool = False

    @property
    def display(self) -> str:
        """The file as a user finds it: a path, or `archive:member`."""
        if self.tree.kind == "dir":
            return str(self.tree.path / self.relpath)
        return f"{self.tree.path}:{self.relpath}"

    @property
    def short(self) -> str:
        """The file relative to the download folder (for dataset.json)."""
        return f"{self.tree.path.name}{'/' if self.tree.kind == 'dir' else ':'}{self.relpath}"

    def fingerprint(self) -> list:
        """Name and size of the file (of each file in a folder): the same for a zip and its extracted folder."""
        if not self.is_dir:
            return [PurePosixPath(self.relpath).name, self.tree.sizes[self.relpath]]
        return sorted([PurePosixPath(p).name, size] for p, size in self.tree.members_under(self.relpath).items())

    def local(self) -> Path:
        return self.tree.local(self)


class SourceTree:
    """The regular files of a folder or an archive, by relative POSIX path (with their sizes)."""

    def __init__(self, path: Path, staging: Staging):
        self.path = Path(path)
        self.staging = staging
        self._extracted: Path | None = None
        self._tar_extracted = False
        self._zip_names: dict[str, str] = {}  # checked name -> name as stored in the zip
        if self.path.is_dir():
            self.kind = "dir"
            files = (p for p in sorted(self.path.rglob("*")) if p.is_file())
            self.sizes = {p.relative_to(self.path).as_posix(): p.stat().st_size for p in files}
            self.sizes = {name: size for name, size in self.sizes.items() if not _skipped(name)}
        elif is_archive(self.path):
            self.kind = "zip" if self.path.name.lower().endswith(ZIP_SUFFIXES) else "tar"
            self.sizes = self._list_zip() if self.kind == "zip" else self._list_tar()
        else:
            raise DatasetError(f"{self.path} is neither a folder nor a zip/tar archive. Point --src at the download.")

    # ---- listing (checks every member name) --------------------------------------------------------------------

    def _safe(self, name: str) -> str:
        name = name.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise DatasetError(
                f"{self.path}: archive member {name!r} would be written outside the extraction folder (absolute "
                "path or '..'). The archive is unsafe and was not extracted; download it again from the official "
                "source."
            )
        return "/".join(part for part in parts if part not in ("", "."))

    def _refused(self, member: str, kind: str) -> DatasetError:
        return DatasetError(f"{self.path}: archive member {member!r} is a {kind}: refused (it could point outside the "
                            "extraction folder). The archive was not extracted; extract it yourself and pass the "
                            "folder, or download it again.")

    def _corrupt(self, error: Exception) -> DatasetError:
        return DatasetError(f"{self.path} cannot be read as a {self.kind} archive ({error}). The download is "
                            "incomplete or corrupt: download it again (or extract it and pass the folder).")

    def _list_zip(self) -> dict[str, int]:
        try:
            with zipfile.ZipFile(self.path) as archive:
                infos = archive.infolist()
        except READ_ERRORS as error:
            raise self._corrupt(error) from None
        sizes = {}
        for info in infos:
            name = self._safe(info.filename)
            mode = info.external_attr >> 16  # the Unix file type and mode, when the zip was made on Unix
            if stat.S_ISLNK(mode):
                raise self._refused(info.filename, "link")
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise self._refused(info.filename, "special file")
            if not info.is_dir() and name and not _skipped(name):
                sizes[name] = info.file_size
                self._zip_names[name] = info.filename
        return sizes

    def _list_tar(self) -> dict[str, int]:
        sizes = {}
        try:
            with tarfile.open(self.path) as archive:
                for member in archive:
                    name = self._safe(member.name)
                    if member.isdir() or not name or _skipped(name):
                        continue
                    if not member.isfile():
                        raise self._refused(member.name, "link" if member.issym() or member.islnk() else
                                            "special file")
                    sizes[name] = member.size
        except READ_ERRORS as error:
            raise self._corrupt(error) from None
        return sizes

    # ---- access ------------------------------------------------------------------------------------------------

    def ref(self, relpath: str, is_dir: bool = False) -> SourceRef:
        return SourceRef(self, relpath, is_dir)

    def match(self, pattern: re.Pattern) -> list[tuple[re.Match, str]]:
        """(match, relpath) for every file whose relative path `pattern` finds (re.search), in sorted order."""
        return [(m, name) for name in sorted(self.sizes) if (m := pattern.search(name))]

    def members_under(self, folder: str) -> dict[str, int]:
        prefix = folder.rstrip("/") + "/" if folder else ""
        return {name: size for name, size in self.sizes.items() if name.startswith(prefix)}

    def read_text(self, relpath: str) -> str:
        """A small member's text, without extracting the archive."""
        try:
            if self.kind == "dir":
                return (self.path / relpath).read_text(encoding="utf-8")
            if self.kind == "zip":
                with zipfile.ZipFile(self.path) as archive:
                    return archive.read(self._zip_names[relpath]).decode()
            with tarfile.open(self.path) as archive:
                member = next(m for m in archive if self._safe(m.name) == relpath)
                return archive.extractfile(member).read().decode()
        except READ_ERRORS as error:
            raise self._corrupt(error) from None

    def local(self, ref: SourceRef) -> Path:
        """A path on disk for `ref`, extracting it from the archive first when needed."""
        if self.kind == "dir":
            return self.path / ref.relpath
        names = list(self.members_under(ref.relpath)) if ref.is_dir else [ref.relpath]
        if self._extracted is None:
            self._extracted = self.staging.folder() / normalised(self.path.name)
        try:
            if self.kind == "zip":
                with zipfile.ZipFile(self.path) as archive:
                    for name in names:
                        self._write(self._extracted / name, lambda n=name: archive.open(self._zip_names[n]))
            elif not self._tar_extracted:
                self._extract_tar()
        except READ_ERRORS as error:
            raise self._corrupt(error) from None
        return self._extracted / ref.relpath

    def _extract_tar(self) -> None:
        """Tar members are extracted all at once: compressed tars cannot be read out of order cheaply."""
        with tarfile.open(self.path) as archive:
            for member in archive:
                name = self._safe(member.name)
                if name in self.sizes:
                    self._write(self._extracted / name, lambda m=member: archive.extractfile(m))
        self._tar_extracted = True

    def _write(self, target: Path, opener) -> None:
        if target.is_file():
            return
        if not target.resolve().is_relative_to(self._extracted.resolve()):  # names are checked; belt and braces
            raise DatasetError(f"{self.path}: member {target} escapes the extraction folder; archive not used.")
        with replacing(target) as partial, opener() as source, open(partial, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)


def find_component(src: Path, key: str, exact: bool = True) -> Path | None:
    """The folder or archive in `src` (or `src` itself) whose normalised name is `key` (or contains it, when not
    `exact`). A folder wins over an archive of the same name: it needs no extraction."""
    src = Path(src)

    def fits(path: Path) -> bool:
        name = normalised(path.name)
        return (name == key if exact else key in name) and (path.is_dir() or is_archive(path))

    if fits(src):
        return src
    if not src.is_dir():
        return None
    found = sorted((p for p in src.iterdir() if fits(p)), key=lambda p: (not p.is_dir(), p.name))
    return found[0] if found else None
