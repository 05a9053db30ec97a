# servescope's own image (collector, load generator, dashboard). vLLM is not in it.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY servescope servescope
COPY collectors collectors
COPY loadgen loadgen
COPY capacity capacity
COPY dashboard dashboard
COPY scenarios scenarios
RUN pip install --no-cache-dir .
ENV SERVESCOPE_DB=/data/servescope.db
VOLUME /data
ENTRYPOINT ["servescope"]
