#!/usr/bin/env bash
# Download the VCTK corpus, check it, extract it safely and say where it is.
#
#   ./download_vctk.sh [TARGET_DIR]        (default: $DS_DIR, else ~/deep-speaker-data)
#
# Environment:
#   VCTK_URL     where to download from: a mirror, or a local archive as file:///path/VCTK.tar.gz
#                (default: the University of Edinburgh's VCTK 0.92 zip, about 11 GB)
#   VCTK_SHA256  expected SHA-256 of the archive; the download is refused when it differs.
#                No default: no checksum is published beside the official file.
#   PYTHON       the Python used to extract (default python3)
#
# An interrupted download is resumed on the next run (TARGET_DIR/<archive>.part). Extraction refuses
# the whole archive if any member has an absolute path, a '..' component, a link leading outside or
# a parent folder that is a link (a symlink chain); a failed extraction leaves nothing behind.
set -euo pipefail

VCTK_URL="${VCTK_URL:-https://datashare.ed.ac.uk/bitstream/handle/10283/3443/VCTK-Corpus-0.92.zip}"
VCTK_SHA256="${VCTK_SHA256:-}"
PYTHON="${PYTHON:-python3}"
TARGET="${1:-${DS_DIR:-$HOME/deep-speaker-data}}"

name="$(basename "${VCTK_URL%%\?*}")"
mkdir -p "$TARGET"
TARGET="$(cd "$TARGET" && pwd)"
archive="$TARGET/$name"
partial="$archive.part"

download() {  # URL FILE: fetch, continuing FILE where a previous run stopped
    local url="$1" out="$2" rc=0
    if command -v curl >/dev/null; then
        curl -fL --retry 3 --retry-delay 2 -C - -o "$out" "$url" || rc=$?
        if [[ $rc -eq 33 ]]; then  # the server cannot resume (no byte ranges): start again
            echo "the server cannot resume; downloading $url from the start" >&2
            rm -f "$out"
            rc=0
            curl -fL --retry 3 --retry-delay 2 -o "$out" "$url" || rc=$?
        fi
        return $rc
    fi
    wget -c -O "$out" "$url"
}

sha256_of() {
    if command -v sha256sum >/dev/null; then
        sha256sum "$1" | cut -d' ' -f1
    else
        "$PYTHON" -c 'import hashlib, sys; h = hashlib.sha256(); f = open(sys.argv[1], "rb")
for block in iter(lambda: f.read(1 << 20), b""): h.update(block)
print(h.hexdigest())' "$1"
    fi
}

if [[ -f "$archive" ]]; then
    echo "archive already downloaded: $archive"
else
    [[ -s "$partial" ]] && echo "resuming $partial ($(wc -c <"$partial") bytes so far)"
    echo "downloading $VCTK_URL"
    download "$VCTK_URL" "$partial"
    if [[ -n "$VCTK_SHA256" ]]; then
        actual="$(sha256_of "$partial")"
        if [[ "${actual,,}" != "${VCTK_SHA256,,}" ]]; then
            mv -f "$partial" "$archive.bad-checksum"
            echo "error: checksum mismatch for $VCTK_URL: expected $VCTK_SHA256, got $actual;" \
                 "kept as $archive.bad-checksum, nothing extracted" >&2
            exit 1
        fi
        echo "checksum ok ($actual)"
    fi
    mv -f "$partial" "$archive"
fi

corpus="$("$PYTHON" - "$archive" "$TARGET" <<'PY'
"""Extract an archive into TARGET, refusing it whole if any member could land outside.

Checked before anything is written: no absolute path or '..' component, no device or special file, no
member placed under a symlink of the archive (a chain 'a -> .', 'a/b -> ..' would pass a per-member check
and climb out), and no link leading outside. The archive is then extracted into a temporary folder inside
TARGET and moved into place only when that succeeded, so a failure leaves nothing extracted.
"""
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import zipfile

archive, target = sys.argv[1], sys.argv[2]


def escapes(name):
    """Whether a member path is absolute or climbs out with '..'."""
    name = name.replace("\\", "/")
    return name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in name.split("/")


def refuse(reason):
    sys.exit(f"error: refusing to extract {archive}: {reason}; nothing was extracted")


def under_symlink(name, symlinks):
    """Whether some parent folder of a member is itself a symlink member of the archive."""
    parts = name.strip("/").split("/")
    return any("/".join(parts[:i]) in symlinks for i in range(1, len(parts)))


def check_tar(members):
    symlinks = {m.name.strip("/") for m in members if m.issym()}
    for m in members:
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            refuse(f"member {m.name!r} is a device or special file")
        if escapes(m.name) or under_symlink(m.name, symlinks):
            refuse(f"member {m.name!r} would be written outside {target}")
        if m.issym():
            link = posixpath.normpath(posixpath.join(posixpath.dirname(m.name), m.linkname))
            if m.linkname.startswith("/") or escapes(link) or under_symlink(link + "/x", symlinks):
                refuse(f"member {m.name!r} links outside {target} (to {m.linkname!r})")
        if m.islnk() and (escapes(m.linkname) or under_symlink(m.linkname, symlinks)):
            refuse(f"member {m.name!r} links outside {target} (to {m.linkname!r})")


def destination(names):
    top = {n.strip("/").split("/")[0] for n in names if n.strip("/")}
    return top, (target if len(top) == 1 else os.path.join(target, os.path.basename(archive).split(".")[0]))


if tarfile.is_tarfile(archive):
    opened, kind = tarfile.open(archive), "tar"
    members = opened.getmembers()
    check_tar(members)
    names = [m.name for m in members]
elif zipfile.is_zipfile(archive):
    opened, kind = zipfile.ZipFile(archive), "zip"
    names = opened.namelist()
    for n in names:
        if escapes(n):
            refuse(f"member {n!r} would be written outside {target}")
else:
    sys.exit(f"error: {archive} is neither a tar nor a zip archive (an error page instead of the corpus?)")

top, dest = destination(names)
entries = sorted({n.strip("/").split("/")[0] for n in names if n.strip("/")})
present = [e for e in entries if os.path.lexists(os.path.join(dest, e))]
if present and len(present) == len(entries):  # moved into place whole by an earlier run
    print(f"already extracted in {dest}", file=sys.stderr)
elif present:
    refuse(f"{os.path.join(dest, present[0])} exists already, but not all of the archive does; remove it first")
else:
    staging = tempfile.mkdtemp(prefix=".extracting-", dir=target)
    try:
        with opened:
            if kind == "tar":
                # Python's 'data' filter (where it exists) enforces the same rules once more.
                opened.extractall(staging, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            else:
                opened.extractall(staging)
        os.makedirs(dest, exist_ok=True)
        for entry in entries:
            os.replace(os.path.join(staging, entry), os.path.join(dest, entry))
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        refuse(f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)

# The corpus folder is the one holding wav48/ or wav48_silence_trimmed/.
for root, dirs, _ in os.walk(dest):
    if {"wav48", "wav48_silence_trimmed"} & set(dirs):
        print(root)
        break
else:
    print(dest if len(top) != 1 else os.path.join(target, top.pop()))
PY
)"

echo "VCTK is in $corpus"
echo "next: python cli.py --regenerate_full_cache --multi_threading --cache_output_dir $TARGET/cache --audio_dir $corpus"
