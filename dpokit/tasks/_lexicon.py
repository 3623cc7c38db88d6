"""General-purpose English sentiment lexicon for the reviews judge.

Written for dpokit from scratch. It deliberately covers far more than the words the
reviews generator uses, so that the judge rewards positive writing in general rather
than the generator's own phrasing. Words whose polarity depends heavily on context
("like", "pretty", "cheap", "loud", "dry", "sweet", "quality", "well") are left out on
purpose: a wrong guess there costs more than the missing signal.

Strong words count more than ordinary ones; every strong word is also in its base set.
"""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


POSITIVE = _words("""
    good great excellent amazing awesome wonderful fantastic fabulous terrific superb
    outstanding brilliant marvelous marvellous magnificent splendid stellar exceptional
    phenomenal remarkable impressive incredible extraordinary spectacular stunning
    breathtaking gorgeous beautiful lovely charming delightful delight delighted delicious
    tasty flavourful flavorful scrumptious heavenly divine exquisite elegant graceful classy
    polished refined sophisticated stylish sleek crisp vivid vibrant lively colourful
    colorful bright cheerful joyful joy joyous happy happily glad gladly pleased pleasant
    pleasure pleasing enjoy enjoyable enjoyment fun funny hilarious witty clever smart
    intelligent insightful thoughtful inventive creative original imaginative innovative
    fresh inspiring inspired uplifting moving touching heartfelt heartwarming sincere honest
    genuine authentic warm welcoming friendly kind generous gracious helpful attentive
    courteous polite caring comfortable comfy cosy cozy relaxing relaxed calm peaceful
    serene tranquil soothing clean spotless tidy spacious roomy airy convenient reliable
    dependable sturdy solid durable premium efficient effective intuitive responsive smooth
    seamless effortless painless easy useful handy practical valuable worthwhile worth
    affordable bargain love lovable adore adorable fond favourite favorite best better
    superior perfect perfectly flawless ideal masterpiece masterful gem treasure winner
    triumph success successful recommend praise admire admirable appreciate charm beauty
    excited exciting thrilling thrilled thrill gripping engaging engrossing captivating
    compelling riveting absorbing immersive fascinating intriguing interesting entertaining
    memorable unforgettable satisfying satisfied rewarding fulfilling rich tender juicy
    succulent balanced harmonious catchy melodic soulful gentle nice neat glorious radiant
    sparkling dazzling lush luxurious plush accommodating knowledgeable passionate
    enthusiastic eager energetic confident accomplished skilful skillful talented gifted
    competent excellence welcome hospitable lucky fortunate safe healthy wholesome
    nourishing fragrant aromatic hearty robust lucid clear coherent accurate precise
    trustworthy wow bravo yay hooray thrive flourish shine shining standout highlight bonus
    keeper beloved cherish treasured grateful thankful proud smile smiling grin grinning
    laugh laughter cheer celebrate applause win impeccable immaculate pristine quaint
    picturesque scenic idyllic magical enchanting whimsical playful upbeat optimistic
    hopeful positive favorable favourable pleasantly nicely wondrous sublime epic legendary
    timeless irresistible mouthwatering delectable savoury savory zesty refreshing sunny
    approachable cleverly elegantly satisfy excel impress impressed inspire amaze amazed
    astounding astonishing quick attractive cute superbly wonderfully beautifully
    brilliantly gracefully generously warmly kindly joyfully fantastically excellently
    treat exceed
""")

STRONG_POSITIVE = _words("""
    excellent amazing awesome wonderful fantastic fabulous terrific superb outstanding
    brilliant marvelous marvellous magnificent splendid exceptional phenomenal incredible
    extraordinary spectacular stunning breathtaking gorgeous exquisite heavenly divine
    perfect flawless masterpiece masterful love adore best impeccable sublime unforgettable
    delightful thrilled glorious
""")

NEGATIVE = _words("""
    bad awful terrible horrible horrendous dreadful atrocious abysmal appalling dire lousy
    poor poorly mediocre subpar inferior worse worst weak lame meh bland boring bored bore
    dull tedious tiresome tiring monotonous repetitive predictable forgettable uninspired
    uninspiring unoriginal derivative clichéd cliched trite stale flat lifeless soulless
    hollow shallow pointless useless worthless waste overpriced overrated overhyped pricey
    disappointing disappointed disappointment disappoint letdown underwhelming underwhelmed
    unimpressive unimpressed unsatisfying unsatisfied dissatisfied frustrating frustrated
    frustration annoying annoyed irritating irritated grating obnoxious infuriating
    maddening aggravating unbearable intolerable insufferable painful pain agonizing
    excruciating miserable misery sad depressing bleak grim gloomy dreary drab dismal murky
    muddy dim dingy grubby dirty filthy grimy smelly stinky musty stuffy cramped crowded
    overcrowded noisy chaotic messy mess cluttered sloppy careless lazy lazily clumsy
    clumsily clunky awkward stiff wooden forced contrived stupid dumb ridiculous absurd
    nonsensical incoherent confusing confused convoluted muddled baffling rushed sluggish
    slow laggy buggy glitchy broken faulty defective flimsy fragile unreliable unstable
    unresponsive unusable inconvenient uncomfortable unpleasant unpleasantly unfriendly
    unwelcoming unhelpful rude impolite dismissive indifferent curt arrogant condescending
    hostile cold unprofessional incompetent inept amateurish disaster disastrous
    catastrophe fiasco failure fail flop dud junk garbage trash rubbish crap crappy nasty
    gross disgusting revolting repulsive vile inedible tasteless flavorless flavourless
    greasy soggy overcooked undercooked burnt bitter sour rancid rotten watery mushy
    rubbery hate hateful loathe despise dislike regret regrettable unfortunately
    unfortunate sadly worry worried worrying problem problematic flaw flawed fault mistake
    error wrong lacking lack ugly hideous unattractive garish tacky cheesy corny cringe
    cringeworthy cringy pretentious bloated overlong padded drag plodding meandering
    aimless mindless vapid insipid unconvincing implausible unlikable unlikeable shoddy
    shabby neglected rundown dilapidated overgrown littered unsafe dangerous hazardous
    harsh strained shrill muffled distorted cacophonous discordant tuneless grueling
    gruelling exhausting punishing unfair ripoff scam fraud deceptive misleading dishonest
    overwrought overwritten melodramatic preachy sappy saccharine cloying sickly nauseating
    unwatchable unreadable unplayable unlistenable dreadfully terribly horribly meager
    meagre stingy skimpy paltry measly fizzle chore slog ordeal nightmare hellish jarring
    joyless humourless humorless charmless uninteresting unengaging unengaged uninvolving
    sterile generic yuck ugh sigh groan lumpy grainy blurry pixelated bulky unsanitary
    moldy mouldy stained sticky leaky unkempt inaccurate intrusive distracting inconsistent
    uneven patchy spotty negligent neglect suck sucks irritate annoy bother tired mediocrity warn loss
""")

STRONG_NEGATIVE = _words("""
    awful terrible horrible horrendous dreadful atrocious abysmal appalling worst
    disgusting revolting inedible unbearable intolerable insufferable hate loathe despise
    disaster disastrous catastrophe fiasco garbage trash rubbish nightmare hellish
    unwatchable unreadable unplayable unlistenable vile excruciating
""")
