"""Our re-creation of the course's plain `read_dataset.py`, written from the contract.

Used only to prove that our network.py and train.py work with the graders' plain files (t2i.harness runs
it); the package never imports it at run time. Like the course's loader it keeps only a 64 px copy of each
image and upsamples it for the larger stages.
"""
import json
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class ZipDataset(Dataset):
    def __init__(self, data_path: str, num_stage: int):
        self.num_stage = num_stage
        self.images = []
        self.img_embeddings = []
        self.txt_embeddings = []
        with zipfile.ZipFile(data_path) as archive:
            meta = json.loads(archive.read("dataset.json"))
            captions = dict(meta["clip_txt_features"])
            for name, img_feature in meta["clip_img_features"]:
                with archive.open(name) as f:
                    image = Image.open(f).convert("RGB").resize((64, 64), Image.BICUBIC)
                image = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1
                self.images.append(image)
                self.img_embeddings.append(torch.tensor(img_feature, dtype=torch.float32))
                self.txt_embeddings.append(torch.tensor(captions[name], dtype=torch.float32))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        image = self.images[idx]
        images = [image]
        for stage in range(1, self.num_stage):
            size = 64 * 2 ** stage
            images.append(F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0])
        img_embedding = normalize(self.img_embeddings[idx])
        captions = self.txt_embeddings[idx]
        txt_embedding = normalize(captions[torch.randint(len(captions), (1,)).item()])
        return images, img_embedding, txt_embedding
