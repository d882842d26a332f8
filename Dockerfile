# bonescan image: one image for every role (listener, worker, review page, serve).
#   docker build -t bonescan .                          # CPU torch 2.13.0 (constraints.txt)
#   docker build -t bonescan:cuda --build-arg TORCH=cuda .   # PyPI's CUDA build for GPU hosts
FROM python:3.11-slim-bookworm

ARG TORCH=cpu
# dcmtk: echoscu/storescu for checks by hand inside the container.
RUN apt-get update \
 && apt-get install -y --no-install-recommends dcmtk \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/bonescan
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY msanet_core msanet_core
COPY pipeline pipeline
COPY listeners listeners
COPY migrations migrations
RUN if [ "$TORCH" = "cpu" ]; then \
      pip install --no-cache-dir -c constraints.txt . ; \
    else \
      pip install --no-cache-dir . ; \
    fi \
 && bonescan version

RUN useradd --system --uid 10001 --home-dir /var/lib/bonescan bonescan \
 && mkdir -p /var/lib/bonescan && chown bonescan /var/lib/bonescan
USER bonescan
ENV BONESCAN_DATA_DIR=/var/lib/bonescan \
    BONESCAN_LISTENER__HOST=0.0.0.0 \
    BONESCAN_LOG_FORMAT=json
VOLUME /var/lib/bonescan
EXPOSE 11112
ENTRYPOINT ["bonescan"]
CMD ["serve"]
