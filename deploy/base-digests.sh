#!/bin/sh
# Pin each Dockerfile's base image (`ARG PYTHON_IMAGE=...`) to the digest its tag names now,
# keeping the tag beside it: `python:3.11-slim-bookworm` becomes
# `python:3.11-slim-bookworm@sha256:<digest>`, and a build then gets that image whatever the
# tag moves to. Run again to follow the tag (security updates of the base), rebuild, test and
# commit the Dockerfiles. Needs the registry and `crane` or `docker buildx`.
#
#   sh deploy/base-digests.sh Dockerfile.fetcher Dockerfile.server     (make base-digests)
set -eu

digest() {
    if command -v crane >/dev/null 2>&1; then
        crane digest "$1"
    else
        docker buildx imagetools inspect "$1" --format '{{json .Manifest}}' |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["digest"])'
    fi
}

for file in "$@"; do
    current=$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$file")
    [ -n "$current" ] || { echo "$file: no ARG PYTHON_IMAGE=" >&2; exit 1; }
    tag=${current%%@*}
    pinned="$tag@$(digest "$tag")"
    case "$pinned" in
        *@sha256:????????????????????????????????????????????????????????????????) ;;
        *) echo "$file: no digest for $tag (got $pinned)" >&2; exit 1 ;;
    esac
    sed -i "s|^ARG PYTHON_IMAGE=.*|ARG PYTHON_IMAGE=$pinned|" "$file"
    echo "$file: $pinned"
done
