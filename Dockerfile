# ShardLab on CPU: the app and the engine in one image. On a GPU host use a CUDA base image instead;
# requirements.txt pins torch==2.13.0, which pip resolves to the CUDA build there.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN python -m pip install --no-cache-dir -r requirements.txt
COPY . .
ENV SHARDLAB_RUNS_DIR=/data/runs
VOLUME /data
EXPOSE 8501
# Inside a container the server must listen beyond loopback; publish the port deliberately (-p 127.0.0.1:8501:8501).
CMD ["python", "-m", "streamlit", "run", "app/shardlab.py", "--server.address=0.0.0.0"]
