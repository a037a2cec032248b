"""Model servers the appliance starts on loopback and talks to with one OpenAI-protocol client
(appliance.ocr.engines.openai_client):

  process.py   what every server shares: start its process, follow its start-up into its run directory, wait until
               it answers; the web app's wait on its systemd unit
  vllm.py      vLLM on an NVIDIA GPU: its command line, its log's start-up phases, its client description
  llamacpp.py  llama.cpp's llama-server on the CPU, from the model's GGUF files: the same, for the CPU
"""
