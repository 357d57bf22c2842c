# A local TEST base image for docker/Dockerfile on machines that reach no container registry.
# Never the published image's base: that stays python:3.11-slim-trixie (docker/Dockerfile).
#
# scripts/container-engine.sh base builds it: debootstrap --variant=minbase bookworm, imported
# as ROOTFS_IMAGE, then this file with a context holding
#   ca-certificates/  the host's local CA certificates (/usr/local/share/ca-certificates/):
#                     the host reaches PyPI and Debian through a TLS-inspecting proxy
#   pip.conf          the host's pip TLS setting (cert = ...), nothing else
# Debian 12's python3 is 3.11, what pyproject.toml requires. Build with --network host.
# A base image, not the image a step runs in: no HEALTHCHECK or USER of its own.
# checkov:skip=CKV_DOCKER_2:a base image; docker/Dockerfile sets the HEALTHCHECK
# checkov:skip=CKV_DOCKER_3:a base image; docker/Dockerfile creates and switches to uid 10001
# checkov:skip=CKV_DOCKER_7:ROOTFS_IMAGE is a local image from debootstrap, never pulled
ARG ROOTFS_IMAGE=local/debian:bookworm
FROM ${ROOTFS_IMAGE}

ENV LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive

# Versions come from the bookworm snapshot debootstrap used (a test base, rebuilt on demand).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python-is-python3 ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

COPY ca-certificates/ /usr/local/share/ca-certificates/
COPY pip.conf /etc/pip.conf
RUN update-ca-certificates \
    && python -c "import ssl, sys, venv; assert sys.version_info[:2] == (3, 11), sys.version"

CMD ["python3"]
