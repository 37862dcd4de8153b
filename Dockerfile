# The server's container image (docs/operations.md#container-image): slim Python, the server in a
# virtual environment, run by a user of its own. PyAV's wheel carries the FFmpeg libraries it uses
# (libavcodec, libavformat, libvpx, libopus, ...) and the other wheels theirs (aiortc, pylibsrtp,
# the speech engines); beyond them the binaries link only libc, libgcc and zlib, which the base
# image has, so nothing is installed from the distribution.
#
#   docker build -t huiyi .
#   docker run --rm -p 8000:8000 -p 7882:7882/udp -e HUIYI_SFU_ANNOUNCE_ADDRESSES=<public IP> huiyi
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/huiyi/src
COPY . .
RUN python -m venv /opt/huiyi/venv && /opt/huiyi/venv/bin/pip install .

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 huiyi \
 && useradd --system --uid 10001 --gid huiyi --home-dir /var/lib/huiyi --create-home --shell /usr/sbin/nologin huiyi
COPY --from=build /opt/huiyi/venv /opt/huiyi/venv
# run_server.py and the browser client (web/) come from the source tree.
COPY --from=build /opt/huiyi/src /opt/huiyi/src
ENV PATH=/opt/huiyi/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HUIYI_SERVER_HOST=0.0.0.0 \
    HUIYI_SERVER_PORT=8000 \
    HUIYI_SERVER_DATA_DIR=/var/lib/huiyi/data \
    HUIYI_SERVER_LOG_FORMAT=json \
    HUIYI_METRICS_HOST=0.0.0.0 \
    HUIYI_METRICS_PORT=9464 \
    HUIYI_SFU_UDP_PORT=7882 \
    HUIYI_SFU_TCP_PORT=7881 \
    HUIYI_SFU_WORKERS=1
USER huiyi
WORKDIR /var/lib/huiyi
RUN mkdir -m 0700 /var/lib/huiyi/data
VOLUME /var/lib/huiyi/data
# API and signaling; metrics (keep unpublished); media (one UDP port, and TCP for clients without
# UDP); TURN. One media worker uses these ports; with HUIYI_SFU_WORKERS=N, worker i takes 7882+i/udp
# and 7881+i/tcp, to be published too (docs/operations.md#media-workers).
EXPOSE 8000 9464 7882/udp 7881 3478/udp 3478/tcp
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health/ready', timeout=4); sys.exit(0)"]
ENTRYPOINT ["python", "/opt/huiyi/src/run_server.py"]
