"""Our re-creation of the graders' plain `read_dataset.py`, written from ../shared/CONTRACT.md.

Used only to prove that our network.py and train.py work with the graders' plain files (t2i.harness runs
it); the package never imports it at run time. Facts kept:
* the images are the zip's members whose extension is in `PIL.Image.EXTENSION`, sorted by name. That table is
  empty until PIL's plugins are registered (`Image.init()`, or any `Image.open`), and this file never registers
  them before indexing: in a fresh interpreter that only imported `PIL.Image`, the dataset has 0 images;
* each image is opened without `convert('RGB')`, resized to 64x64 as a PIL image (bilinear), then ToTensor and
  Normalize(0.5): only that 64 px copy is kept, and the larger stages are resizes of that tensor;
* `dataset.json` is read only if present; the embeddings are L2-normalised;
* an item is (list of num_stage tensors, image embedding, one caption embedding picked with Python's `random`).
"""
import json
import random
import zipfile

import PIL.Image
import torch
import torchvision.transforms as T

from train_utils import normalize


class ZipDataset(torch.utils.data.Dataset):
    def __init__(self, data_path, num_stage):
        self.data_path = data_path
        self.num_stage = num_stage
        self.sizes = [64 * 2 ** stage for stage in range(num_stage)]
        self.to_tensor = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
        self.names = []
        self.images = {}
        self.img_embeddings = {}
        self.txt_embeddings = {}
        with zipfile.ZipFile(data_path) as archive:
            members = archive.namelist()
            self.names = [name for name in sorted(members)
                          if "." + name.rsplit(".", 1)[-1].lower() in PIL.Image.EXTENSION]
            for name in self.names:
                with archive.open(name) as f:
                    self.images[name] = self.to_tensor(T.Resize((64, 64))(PIL.Image.open(f)))
            if "dataset.json" in members:
                meta = json.loads(archive.read("dataset.json"))
                for name, embedding in meta["clip_img_features"]:
                    self.img_embeddings[name] = normalize(torch.tensor(embedding))
                for name, embeddings in meta["clip_txt_features"]:
                    self.txt_embeddings[name] = normalize(torch.tensor(embeddings))

    def __len__(self):
        return len(self.names)

    def __getitem__(self, idx):
        name = self.names[idx]
        image_64 = self.images[name]
        images = [image_64] + [T.Resize((size, size))(image_64) for size in self.sizes[1:]]
        captions = self.txt_embeddings[name]
        return images, self.img_embeddings[name], captions[random.randint(0, len(captions) - 1)]
