#!/usr/bin/env bash
# Downloads the StarGAN v2 datasets and pretrained networks published by the authors (clovaai/stargan-v2),
# into the places this project's defaults look:
#
#   bash scripts/download.sh celeba-hq-dataset             # -> data/celeba_hq/{train,val}/{female,male}
#   bash scripts/download.sh afhq-dataset                  # -> data/afhq/{train,val}/{cat,dog,wild}
#   bash scripts/download.sh afhq-v2-dataset               # -> data/afhq_v2/{train,test}/{cat,dog,wild}
#   bash scripts/download.sh pretrained-network-celeba-hq  # -> expr/checkpoints/celeba_hq/100000_nets_ema.ckpt
#   bash scripts/download.sh pretrained-network-afhq       # -> expr/checkpoints/afhq/100000_nets_ema.ckpt
#   bash scripts/download.sh wing                          # -> expr/checkpoints/wing.ckpt, celeba_lm_mean.npz
#   bash scripts/download.sh representative-images         # -> assets/representative/{celeba_hq,afhq,custom}
#
# Paths are relative to the repository root, wherever the script is called from. A file already in place is kept
# (delete it to download again). Each download goes to NAME.part and is renamed only when complete, so a failed
# or interrupted download never leaves a truncated file under the final name. DRY_RUN=1 prints what would happen.
# The datasets and networks are the authors' (CelebA-HQ: research use only; AFHQ and the networks: CC BY-NC 4.0);
# so are the representative images (the reference repository's assets/representative, CC BY-NC 4.0): git-ignored here.
set -euo pipefail

# The authors' Dropbox links, with dl=1 (the file itself rather than Dropbox's preview page).
URL_CELEBA_HQ_DATASET='https://www.dropbox.com/s/f7pvjij2xlpff59/celeba_hq.zip?dl=1'
URL_AFHQ_DATASET='https://www.dropbox.com/s/t9l9o3vsx2jai3z/afhq.zip?dl=1'
URL_AFHQ_V2_DATASET='https://www.dropbox.com/s/vkzjokiwof5h8w6/afhq_v2.zip?dl=1'
URL_NETS_CELEBA_HQ='https://www.dropbox.com/s/96fmei6c93o8b8t/100000_nets_ema.ckpt?dl=1'
URL_NETS_AFHQ='https://www.dropbox.com/s/etwm810v25h42sn/100000_nets_ema.ckpt?dl=1'
URL_WING='https://www.dropbox.com/s/tjxpypwpt38926e/wing.ckpt?dl=1'
URL_LM_MEAN='https://www.dropbox.com/s/91fth49gyb7xksk/celeba_lm_mean.npz?dl=1'
# the reference repository, for its assets/representative folder (the sample images the defaults of sample/align name)
URL_REFERENCE_GIT='https://github.com/clovaai/stargan-v2.git'
URL_REFERENCE_ZIP='https://github.com/clovaai/stargan-v2/archive/refs/heads/master.zip'

usage() {
    cat <<EOF
Usage: bash scripts/download.sh WHAT

WHAT is one of:
  celeba-hq-dataset             CelebA-HQ, 30,000 faces, female/male       -> data/celeba_hq
  afhq-dataset                  AFHQ, 15,000 animal faces, cat/dog/wild    -> data/afhq
  afhq-v2-dataset               AFHQ v2 (better resampling, train/test)    -> data/afhq_v2
  pretrained-network-celeba-hq  the authors' CelebA-HQ networks (EMA)      -> expr/checkpoints/celeba_hq/100000_nets_ema.ckpt
  pretrained-network-afhq       the authors' AFHQ networks (EMA)           -> expr/checkpoints/afhq/100000_nets_ema.ckpt
  wing                          face landmark network and mean landmarks   -> expr/checkpoints/wing.ckpt,
                                (needed by CelebA-HQ and --mode align)        expr/checkpoints/celeba_lm_mean.npz
  representative-images         the authors' sample images (src/ref per     -> assets/representative
                                domain, custom faces) for --mode sample/align
EOF
}

die() {
    echo "download.sh: $*" >&2
    exit 1
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the repository root
DRY_RUN="${DRY_RUN:-0}"

# fetch URL DEST: downloads URL to DEST.part with curl (or wget), checks it, renames it to DEST.
fetch() {
    local url="$1" dest="$2" part="$2.part" log rc=0
    if [ -s "$dest" ]; then
        echo "$dest is already there (delete it to download it again)"
        return 0
    fi
    echo "Downloading $dest"
    echo "  from $url"
    if [ "$DRY_RUN" = 1 ]; then
        return 0
    fi
    mkdir -p "$(dirname "$dest")"
    rm -f "$part"
    log="$(mktemp)"
    if command -v curl >/dev/null 2>&1; then
        curl -fL --retry 3 --connect-timeout 30 -o "$part" "$url" 2>"$log" || rc=$?
        local tool=curl
    elif command -v wget >/dev/null 2>&1; then
        wget -O "$part" "$url" 2>"$log" || rc=$?
        local tool=wget
    else
        rm -f "$log"
        die "neither curl nor wget is installed: cannot download $dest"
    fi
    if [ "$rc" -ne 0 ]; then
        rm -f "$part"
        echo "download.sh: downloading $dest failed ($tool exit code $rc). $tool said:" >&2
        tail -n 5 "$log" | sed 's/^/  /' >&2
        rm -f "$log"
        die "no file was written to $dest; check the network and try again"
    fi
    rm -f "$log"
    if [ ! -s "$part" ]; then
        rm -f "$part"
        die "downloading $dest gave an empty file; the link may be gone ($url)"
    fi
    # Dropbox answers an HTML page (not an error code) when a link is disabled or over its traffic limit
    if head -c 512 "$part" | grep -qiE '<(!doctype html|html)'; then
        rm -f "$part"
        die "downloading $dest gave a web page instead of the file: the link may be rate-limited or gone ($url)"
    fi
    case "$dest" in
        *.zip|*.npz)
            if [ "$(head -c 2 "$part")" != "PK" ]; then
                rm -f "$part"
                die "downloading $dest gave something that is not a zip archive ($url)"
            fi ;;
    esac
    mv -f "$part" "$dest"
}

# unzip_to ZIP DIR: extracts ZIP so that DIR ends up holding the archive's train/ (and val/ or test/) folders,
# whether the archive has them at its top or inside one top-level folder. Extracts to a temporary folder first.
unzip_to() {
    local zip="$1" dir="$2" tmp="$2.extracting" inner
    if [ "$DRY_RUN" = 1 ]; then
        echo "Extracting $zip to $dir"
        return 0
    fi
    echo "Extracting $zip to $dir"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    local rc=0
    if command -v unzip >/dev/null 2>&1; then
        unzip -q "$zip" -d "$tmp" || rc=$?
    else
        python3 -m zipfile -e "$zip" "$tmp" || rc=$?
    fi
    if [ "$rc" -ne 0 ]; then
        rm -rf "$tmp"
        die "could not extract $zip (a corrupt download? delete it and run this again)"
    fi
    inner="$tmp"
    if [ ! -d "$tmp/train" ]; then
        inner="$(find "$tmp" -mindepth 2 -maxdepth 2 -type d -name train -print -quit)"
        [ -n "$inner" ] || { rm -rf "$tmp"; die "$zip has no train/ folder: is it the right archive?"; }
        inner="$(dirname "$inner")"
    fi
    rm -rf "$dir"
    mv "$inner" "$dir"
    rm -rf "$tmp" "$zip"
}

dataset() {
    local url="$1" name="$2"
    if [ -d "data/$name/train" ]; then
        echo "data/$name is already there (delete it to download it again)"
        return 0
    fi
    fetch "$url" "data/$name.zip"
    unzip_to "data/$name.zip" "data/$name"
}

# representative: the reference repository's assets/representative into assets/representative, by a sparse git
# checkout (only that folder's files are fetched) or, without git, from the repository's zip. Goes to a temporary
# folder first and is moved into place only when complete.
representative() {
    local dest=assets/representative tmp=assets/representative.part
    if [ -d "$dest/celeba_hq/src" ] && [ -d "$dest/afhq/src" ]; then
        echo "$dest is already there (delete it to download it again)"
        return 0
    fi
    echo "Downloading $dest"
    echo "  from $URL_REFERENCE_GIT (assets/representative only)"
    if [ "$DRY_RUN" = 1 ]; then
        return 0
    fi
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if command -v git >/dev/null 2>&1 && \
        git clone -q --depth 1 --filter=blob:none --sparse "$URL_REFERENCE_GIT" "$tmp/repo" 2>"$tmp/log" && \
        git -C "$tmp/repo" sparse-checkout set assets/representative 2>>"$tmp/log"; then
        :
    else
        echo "  (git sparse checkout failed or git is missing; trying the zip $URL_REFERENCE_ZIP)"
        rm -rf "$tmp/repo"
        fetch "$URL_REFERENCE_ZIP" "$tmp/reference.zip"
        python3 - "$tmp/reference.zip" "$tmp/repo" <<'PY' || { rm -rf "$tmp"; die "could not extract assets/representative from the zip"; }
import sys, zipfile, os
zf = zipfile.ZipFile(sys.argv[1])
names = [n for n in zf.namelist() if '/assets/representative/' in n and not n.endswith('/')]
if not names:
    sys.exit('the zip has no assets/representative folder')
for n in names:
    rel = n.split('/', 1)[1]  # drop the archive's top folder (stargan-v2-master/)
    out = os.path.join(sys.argv[2], rel)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with zf.open(n) as src, open(out, 'wb') as dst:
        dst.write(src.read())
PY
    fi
    [ -d "$tmp/repo/assets/representative/celeba_hq/src" ] || { rm -rf "$tmp"; die "the download has no assets/representative/celeba_hq/src"; }
    rm -rf "$dest"
    mv "$tmp/repo/assets/representative" "$dest"
    rm -rf "$tmp"
    echo "$dest: $(find "$dest" -type f | wc -l) files (the authors' images, CC BY-NC 4.0; git-ignored, not to be committed)"
}

if [ "$#" -ne 1 ]; then
    usage >&2
    exit 2
fi

case "$1" in
    celeba-hq-dataset)
        dataset "$URL_CELEBA_HQ_DATASET" celeba_hq ;;
    afhq-dataset)
        dataset "$URL_AFHQ_DATASET" afhq ;;
    afhq-v2-dataset)
        dataset "$URL_AFHQ_V2_DATASET" afhq_v2
        echo "AFHQ v2 has train/ and test/: use --train_img_dir data/afhq_v2/train --val_img_dir data/afhq_v2/test" ;;
    pretrained-network-celeba-hq)
        fetch "$URL_NETS_CELEBA_HQ" expr/checkpoints/celeba_hq/100000_nets_ema.ckpt ;;
    pretrained-network-afhq)
        fetch "$URL_NETS_AFHQ" expr/checkpoints/afhq/100000_nets_ema.ckpt ;;
    wing)
        fetch "$URL_WING" expr/checkpoints/wing.ckpt
        fetch "$URL_LM_MEAN" expr/checkpoints/celeba_lm_mean.npz ;;
    representative-images)
        representative ;;
    -h|--help)
        usage ;;
    *)
        echo "download.sh: unknown argument '$1'" >&2
        usage >&2
        exit 2 ;;
esac
