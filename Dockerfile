# freshd in a container: an external PostgreSQL by URL, metrics/health on :9464.
#
#   docker build -t freshd .
#   docker run -e FRESHD_DATABASE_URL=postgresql://freshd:secret@db/freshd \
#              -v freshd-state:/var/lib/freshd -p 127.0.0.1:9464:9464 freshd
#
# /var/lib/freshd holds secret.key (credentials are sealed with it): keep it on a volume.
# Admin: `docker exec -it CONTAINER freshctl status`.  compose.yaml wires the rest.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.py constraints.txt README.md ./
COPY daemon daemon
COPY connectors connectors
# no `embedded` extra: the database is external (FRESHD_DATABASE_URL)
RUN python -m venv /opt/freshd \
 && /opt/freshd/bin/pip install --no-cache-dir --disable-pip-version-check -c constraints.txt .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 freshd \
 && useradd --system --uid 10001 --gid freshd --home-dir /var/lib/freshd --shell /usr/sbin/nologin freshd \
 && install -d -o freshd -g freshd -m 0700 /var/lib/freshd /run/freshd \
 && install -d -o root -g freshd -m 0750 /etc/freshd
COPY --from=build /opt/freshd /opt/freshd
ENV PATH=/opt/freshd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FRESHD_STATE_DIR=/var/lib/freshd \
    FRESHD_RUNTIME_DIR=/run/freshd \
    FRESHD_SOCKET=/run/freshd/admin.sock \
    FRESHD_METRICS_ADDRESS=0.0.0.0:9464 \
    FRESHD_LOG_FORMAT=json
# FRESHD_DATABASE_URL is given at run time, never baked in.  A config file, if any, is
# mounted at /etc/freshd/freshd.toml (read when present).
VOLUME ["/var/lib/freshd"]
EXPOSE 9464
USER 10001:10001
# liveness only (/readyz is for load balancers: a store outage is not a reason to restart)
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["freshd"]
CMD ["run"]
