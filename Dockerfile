# One image for all RT-DRA components: the webhook (rtdra-webhook), the
# scheduler extender (rtdra-extender) and the node agent (rtdra-agent, with its
# OCI hook rtdra-hook). Each Deployment/DaemonSet picks its command.
#
#   docker build -t rt-dra:0.1.0 .
#
# Debian's own Python, so the very same recipe also builds without a container
# engine or registry: `python hack/image.py` reads this file and carries it out
# (debootstrap for FROM + apt-get, chroot for the other RUN steps; docs/install.md,
# "Build the image"). Keep to the instructions it understands (FROM, RUN, COPY,
# WORKDIR, ENV, USER, ENTRYPOINT, CMD); it refuses anything else.
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY rtdra ./rtdra
COPY extender ./extender
COPY webhook ./webhook
COPY agent ./agent
RUN python3 -m venv /opt/build && /opt/build/bin/pip wheel --no-cache-dir --wheel-dir /wheels .

FROM debian:bookworm-slim
# util-linux gives chrt/taskset for troubleshooting on the node.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv util-linux \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN python3 -m venv /opt/rt-dra \
 && /opt/rt-dra/bin/pip install --no-cache-dir --no-index /wheels/*.whl \
 && rm -rf /wheels
ENV PATH=/opt/rt-dra/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The webhook and the extender run as this user; the agent's DaemonSet runs
# privileged as root (it sets SCHED_DEADLINE and writes cpusets).
RUN useradd --system --uid 65532 --no-create-home rtdra
USER 65532
ENTRYPOINT []
CMD ["rtdra", "--help"]
