# m365-mail-exporter: slim, non-root image.
#   docker build -t m365-mail-exporter --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg BRANCH=$(git rev-parse --abbrev-ref HEAD) --build-arg BUILD_DATE=$(date -u +%FT%TZ) .
#   docker run -p 9731:9731 m365-mail-exporter --demo --web.listen-address 0.0.0.0:9731
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
# build info for --version and m365_exporter_build_info (exporter/buildinfo.py); no .git in the image
ARG REVISION=unknown
ARG BRANCH=unknown
ARG BUILD_DATE=unknown
ENV M365_EXPORTER_REVISION=$REVISION M365_EXPORTER_BRANCH=$BRANCH M365_EXPORTER_BUILD_DATE=$BUILD_DATE
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /var/lib/m365-mail-exporter --create-home exporter \
    && mkdir -p /etc/m365-mail-exporter && chown exporter /etc/m365-mail-exporter
COPY config/example.yml /etc/m365-mail-exporter/example.yml
USER 10001
WORKDIR /var/lib/m365-mail-exporter
EXPOSE 9731
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9731/-/healthy', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["m365-mail-exporter"]
CMD ["--config.file", "/etc/m365-mail-exporter/m365-mail-exporter.yml", "--web.listen-address", "0.0.0.0:9731"]
