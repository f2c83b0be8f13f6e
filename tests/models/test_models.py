import torch

from pneumo.models.seed_cnn import count_parameters, SeedCNN


def test_seed_cnn_has_the_keras_parameter_count():
    assert count_parameters(SeedCNN()) == 4_287_809


def test_seed_cnn_layers_match_the_seed():
    model = SeedCNN()
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(128 * 16 * 16, 128), (128, 1)]
    assert any(isinstance(m, torch.nn.Tanh) for m in model.head)
    assert [m.p for m in model.head if isinstance(m, torch.nn.Dropout)] == [0.3]


def test_seed_cnn_returns_one_logit_per_image_in_both_memory_formats():
    model = SeedCNN().eval()
    x = torch.rand(4, 3, 128, 128)
    logits = model(x)
    assert logits.shape == (4,)
    fast = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, logits, rtol=1e-4, atol=1e-5)


def test_image_size_must_survive_three_poolings():
    try:
        SeedCNN(image_size=100)
    except ValueError as error:
        assert "divisible by 8" in str(error)
    else:
        raise AssertionError("image_size=100 was accepted")
