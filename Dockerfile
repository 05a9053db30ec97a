# servescope's own image (collector, load generator, dashboard). vLLM is not in it.
# Built from the same wheel a `pip install` gets: the first stage builds it from the source,
# the second installs that wheel alone, so the image holds exactly what the wheel installs
# (tests/test_dockerfile.py checks this file; tests/test_wheel.py checks the wheel).
FROM python:3.11-slim AS wheel
WORKDIR /src
# The context is the repository less what .dockerignore leaves out (.venv, .git, tests ...);
# pyproject.toml decides what goes into the wheel.
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir /tmp/wheels/servescope-*.whl && rm -rf /tmp/wheels \
    && useradd --create-home --uid 10001 servescope \
    && mkdir /data && chown servescope /data
USER servescope
ENV SERVESCOPE_DB=/data/servescope.db
VOLUME /data
WORKDIR /data
ENTRYPOINT ["servescope"]
