"""The architecture figures show the shapes the real modules compute, block by block, and are written as PNGs."""
from PIL import Image

from docs import architecture_figure as af


def test_stackgan_columns_follow_the_course_shapes():
    g_columns, d_columns = af.stackgan_columns()
    assert [column.title for column in g_columns] == ["g_layer[0]: Generator_type_1, 64 px",
                                                      "g_layer[1]: Generator_type_2, 128 px",
                                                      "g_layer[2]: Generator_type_2, 256 px"]
    stage0 = {box.title.split(":")[0].split("  ")[0]: box for box in g_columns[0].boxes}
    assert stage0["condition_aug"].shapes == ["512", "128"]
    assert stage0["mapping"].shapes == ["228", "16384"]  # [c_hat, z]: 128 + 100
    assert stage0["upsample_layer"].layers == "4 x [ConvT 4x4/2 + BN + ReLU]"
    assert stage0["upsample_layer"].shapes == ["1024x4x4", "512x8x8", "256x16x16", "128x32x32", "64x64x64"]
    assert stage0["image_net"].shapes == ["64x64x64", "3x64x64"]
    joining = g_columns[2].boxes[0]
    assert joining.shapes == ["160x128x128", "32x128x128"]  # 32 channels of stage 1's out + the tiled 128
    prior = d_columns[2].boxes[1]
    assert prior.shapes == ["512x16x16", "1024x8x8", "2048x4x4", "1024x4x4", "512x4x4"]
    heads = d_columns[0].boxes[2:]
    assert [head.head for head in heads] == [True, True, True]
    assert [head.shapes for head in heads] == [["512x4x4", "1x1x1"], ["512x4x4 + 128", "1x1x1"],
                                               ["512x4x4 + 128", "512"]]
    assert d_columns[1].boxes[2].title == "the same three heads as D_lst[0]"


def test_galip_columns_and_both_pngs(tmp_path):
    generator, discriminator = af.galip_columns()
    assert generator.boxes[-1].shapes == ["32x256x256", "3x256x256"]
    assert generator.boxes[2].layers.startswith("nearest x2, ")  # the second G-Block doubles the size
    assert discriminator.boxes[-1].head and discriminator.boxes[-1].shapes[-1] == "1x1x1"
    for arch, draw in af.FIGURES.items():
        path = tmp_path / f"{arch}.png"
        draw(str(path))
        with Image.open(path) as image:
            assert image.width == 7 * 300  # 7 inches at 300 dpi: the report's text width
            darkest, lightest = image.convert("L").getextrema()
            assert darkest < 80 and lightest == 255  # dark text and lines on white
