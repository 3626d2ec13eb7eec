# One image for all RT-DRA components: the webhook (rtdra-webhook), the
# scheduler extender (rtdra-extender) and the node agent (rtdra-agent, with its
# OCI hook rtdra-hook). Each Deployment/DaemonSet picks its command.
#
#   docker build -t rt-dra:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY rtdra ./rtdra
COPY extender ./extender
COPY webhook ./webhook
COPY agent ./agent
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# util-linux gives chrt/taskset for troubleshooting on the node.
RUN apt-get update \
 && apt-get install -y --no-install-recommends util-linux \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The webhook and the extender run as this user; the agent's DaemonSet runs
# privileged as root (it sets SCHED_DEADLINE and writes cpusets).
RUN useradd --system --uid 65532 --no-create-home rtdra
USER 65532
ENTRYPOINT []
CMD ["rtdra", "--help"]
