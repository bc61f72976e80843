# gchat-discourse in a container: slim Python, non-root, state on a volume, healthcheck on /healthz.
#   docker build -t gchat-discourse .
#   docker run -d --name gchat-discourse -p 5000:5000 -v gchat-discourse:/data \
#     -e DISCOURSE_API_KEY=... -e DISCOURSE_WEBHOOK_SECRET=... gchat-discourse
# /data must hold config.yaml (with webhook_host "0.0.0.0", and database, token_file and log_file
# relative to it) and token.json from `python main.py auth` (run that on a machine with a browser).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY *.py ./

RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin bridge \
    && mkdir -p /data && chown bridge:bridge /data
USER bridge
VOLUME ["/data"]
EXPOSE 5000

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:5000/healthz', timeout=4).status == 200 else 1)"]

# SIGTERM (docker stop) shuts the bridge down cleanly within 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "/app/main.py", "--config", "/data/config.yaml"]
CMD ["run"]
