"""OCR engines behind one small protocol, split by job:

  base.py            the Engine protocol, check_task, the engines' names and titles
  select.py          the `auto` choice (Choice, choose) and open_engine
  cpu.py             rapidocr on onnxruntime: spotting and plain text
  hunyuan.py         what every HunyuanOCR engine shares: prompt, capping, post-processing
  transformers.py    HunyuanOCR in-process
  openai_client.py   HunyuanOCR behind a model server on loopback (appliance.servers): the one OpenAI-protocol client

Nothing is defined here: import from the module that holds the name.
"""
