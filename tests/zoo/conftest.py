import os

# Every zoo test runs with the Hugging Face hub switched off: loading must never download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
