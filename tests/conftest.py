"""The smoke-sized pipeline, run once per test session: the pipeline and benchmark tests read it."""
import pytest

import finetune
import train_reward
import train_unet


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """Stages 0-3 at smoke size; returns the folder holding unet/, reward/, feedback/, finetune/."""
    root = tmp_path_factory.mktemp("smoke")
    unet, reward, fb, ft = (str(root / n) for n in ("unet", "reward", "feedback", "finetune"))
    train_unet.main(["--preset", "smoke", "--out_dir", unet])
    train_reward.main(["--preset", "smoke", "--unet_dir", unet, "--out_dir", reward,
                       "--feedback_dir", fb])
    finetune.main(["--preset", "smoke", "--unet_dir", unet, "--reward_dir", reward,
                   "--feedback_dir", fb, "--out_dir", ft])
    return root
